//! `bulkhead console` over real HTTP against the real database: sign-in with PostgreSQL logins
//! (a wrong password, a login PostgreSQL trusts, a superuser and a login without a console role
//! are refused; failures are rate-limited), the session cookie (signed, HttpOnly,
//! SameSite=Strict; a tampered one, one from another console process and one signed out are
//! refused), CSRF on every form, the security headers, inert tenant names, and what each role
//! may do, refused by the database and not only hidden by the pages. (The browser flows are in
//! tests/browser/.)

mod common;

use common::{superuser, superuser_options, KillOnDrop};
use reqwest::header::{HeaderMap, CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

const ADMIN: &str = "console_test_admin";
const SUPPORT: &str = "console_test_support";
const FINANCE: &str = "console_test_finance";
const NOBODY: &str = "console_test_nobody";
const LIMITED: &str = "console_test_limited";

fn password_of(login: &str) -> String {
    format!("pw-{login}-Zq8")
}

async fn create_logins(su: &mut PgConnection) {
    for (login, group) in [
        (ADMIN, Some("bulkhead_admin")),
        (SUPPORT, Some("bulkhead_support")),
        (FINANCE, Some("bulkhead_finance")),
        (NOBODY, None),
        (LIMITED, Some("bulkhead_support")),
    ] {
        let exists: bool =
            sqlx::query_scalar("select exists (select from pg_roles where rolname = $1)")
                .bind(login)
                .fetch_one(&mut *su)
                .await
                .unwrap();
        if !exists {
            su.execute(format!("create role {login} login").as_str())
                .await
                .unwrap();
        }
        su.execute(format!("alter role {login} password '{}'", password_of(login)).as_str())
            .await
            .unwrap();
        if let Some(group) = group {
            su.execute(format!("grant {group} to {login}").as_str())
                .await
                .unwrap();
        }
    }
}

struct Console {
    _process: KillOnDrop,
    base: String,
    /// The console's log (stderr): refusals name their reason there, not on the page.
    log: std::path::PathBuf,
}

impl Console {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_console(extra: &[&str]) -> Console {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let options = superuser_options();
    let url = format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap()
    );
    let log = std::env::temp_dir().join(format!("bulkhead-console-test-{port}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["console", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("DATABASE_URL", url)
        // The console reads no password file: the sign-in form's password is the only one.
        .env("PGPASSFILE", "/nonexistent")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let console = Console {
        _process: KillOnDrop(child),
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    for _ in 0..100 {
        if reqwest::get(format!("{}/sign-in", console.base))
            .await
            .is_ok()
        {
            return console;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the console did not start");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value a Set-Cookie header gives `name`, with the header itself.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap().to_string();
            (value, v.to_string())
        })
}

fn hidden_csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

struct SignInAttempt {
    status: StatusCode,
    session: Option<String>,
    body: String,
}

async fn try_sign_in(console: &Console, login: &str, password: &str) -> SignInAttempt {
    let http = client();
    let page = http
        .get(format!("{}/sign-in", console.base))
        .send()
        .await
        .unwrap();
    let (pre, _) =
        set_cookie(page.headers(), "bulkhead_console_pre").expect("a pre-session cookie");
    let csrf = hidden_csrf(&page.text().await.unwrap());
    let response = http
        .post(format!("{}/sign-in", console.base))
        .header(COOKIE, format!("bulkhead_console_pre={pre}"))
        .form(&[("login", login), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let session = set_cookie(response.headers(), "bulkhead_console").map(|(v, header)| {
        assert!(
            header.contains("HttpOnly")
                && header.contains("SameSite=Strict")
                && header.contains("Max-Age="),
            "{header}"
        );
        v
    });
    let body = response.text().await.unwrap();
    SignInAttempt {
        status,
        session: session.filter(|v| !v.is_empty()),
        body,
    }
}

/// A signed-in person: the cookie and the session's CSRF token.
struct Person {
    cookie: String,
    csrf: String,
    base: String,
}

impl Person {
    async fn sign_in(console: &Console, login: &str) -> Person {
        let attempt = try_sign_in(console, login, &password_of(login)).await;
        assert_eq!(
            attempt.status,
            StatusCode::SEE_OTHER,
            "{login}: {}",
            attempt.body
        );
        let cookie = attempt.session.expect("a session cookie");
        let mut person = Person {
            cookie,
            csrf: String::new(),
            base: console.base.clone(),
        };
        let (_, html) = person.get("/tenants").await;
        person.csrf = hidden_csrf(&html);
        person
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = client()
            .get(format!("{}{path}", self.base))
            .header(COOKIE, format!("bulkhead_console={}", self.cookie))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("csrf", &self.csrf));
        self.post_raw(path, &fields, &[]).await
    }

    async fn post_raw(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut request = client()
            .post(format!("{}{path}", self.base))
            .header(COOKIE, format!("bulkhead_console={}", self.cookie))
            .form(form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.text().await.unwrap();
        (status, location.unwrap_or(body))
    }
}

async fn tenant_status(su: &mut PgConnection, tenant: Uuid) -> String {
    sqlx::query_scalar("select status from bulkhead.tenants where id = $1")
        .bind(tenant)
        .fetch_one(su)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_console_signs_in_database_logins_and_the_database_decides() {
    let mut su = superuser().await;
    create_logins(&mut su).await;
    let mut admin_db = common::admin().await;
    let tenant = common::create_tenant(&mut admin_db, "console").await;
    common::populate_tenant(&mut admin_db, tenant).await;
    // A tenant whose name is markup: it must render as text.
    let xss_slug = common::unique_slug("xss");
    let xss: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, $2)")
        .bind(&xss_slug)
        .bind("<script>alert('pwned')</script><img src=x onerror=alert(1)>")
        .fetch_one(&mut admin_db)
        .await
        .unwrap();
    let console = start_console(&["--sign-in-failures", "3", "--header-timeout-secs", "1"]).await;

    // ---- headers on every response, signed in or not
    let page = client()
        .get(format!("{}/sign-in", console.base))
        .send()
        .await
        .unwrap();
    let csp = page
        .headers()
        .get(CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(
        !csp.contains("script-src"),
        "no script source at all: {csp}"
    );
    assert_eq!(page.headers().get("x-frame-options").unwrap(), "DENY");
    assert_eq!(page.headers().get("cache-control").unwrap(), "no-store");

    // ---- sign-in refusals
    let wrong = try_sign_in(&console, ADMIN, "not-the-password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.session.is_none());
    assert!(
        wrong.body.contains("wrong login or password"),
        "{}",
        wrong.body
    );
    assert!(
        !wrong.body.contains("not-the-password"),
        "the page repeats the password"
    );
    let unknown = try_sign_in(&console, "console_test_no_such_login", "whatever").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(
        unknown.body.contains("wrong login or password"),
        "an unknown login reads as a wrong password"
    );
    // The local superuser is trusted by pg_hba.conf: PostgreSQL checks no password for it, so
    // any password "works" at the protocol level. The console refuses it.
    let trusted = try_sign_in(&console, "postgres", "any password at all").await;
    assert!(
        trusted.session.is_none(),
        "a trusted connection signed someone in"
    );
    // Every refusal after the connection reads like a wrong password (no oracle telling a
    // guesser the password was right); the log says why.
    let refused_page = |body: &str| {
        body.contains("wrong login or password, or this login may not use the console")
    };
    assert!(refused_page(&trusted.body), "{}", trusted.body);
    assert_eq!(trusted.status, wrong.status);
    assert!(
        console
            .log()
            .contains("PostgreSQL did not check a password"),
        "{}",
        console.log()
    );
    // The twin: PostgreSQL really does accept that connection with a wrong password.
    let accepted = superuser_options()
        .password("any password at all")
        .connect()
        .await;
    assert!(
        accepted.is_ok(),
        "the trusted connection is refused by PostgreSQL itself: the check above proves nothing"
    );
    let nobody = try_sign_in(&console, NOBODY, &password_of(NOBODY)).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    assert!(refused_page(&nobody.body), "{}", nobody.body);
    assert!(
        console.log().contains("in none of bulkhead_admin"),
        "{}",
        console.log()
    );
    // A superuser with a password PostgreSQL checks is refused too.
    su.execute(format!("alter role {NOBODY} superuser").as_str())
        .await
        .unwrap();
    let privileged = try_sign_in(&console, NOBODY, &password_of(NOBODY)).await;
    su.execute(format!("alter role {NOBODY} nosuperuser").as_str())
        .await
        .unwrap();
    assert!(
        privileged.session.is_none() && refused_page(&privileged.body),
        "{}",
        privileged.body
    );
    assert!(
        console.log().contains("a superuser or BYPASSRLS login"),
        "{}",
        console.log()
    );
    // Login CSRF: a sign-in without the pre-session token, or with another browser's.
    let forged = client()
        .post(format!("{}/sign-in", console.base))
        .form(&[
            ("login", ADMIN),
            ("password", password_of(ADMIN).as_str()),
            ("csrf", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // ---- rate limit: after 3 failures for a login, even its right password waits
    for _ in 0..3 {
        assert_eq!(
            try_sign_in(&console, LIMITED, "wrong").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = try_sign_in(&console, LIMITED, &password_of(LIMITED)).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.body
    );
    assert!(limited.session.is_none());
    // Guesses sent at once count before they run: at most the limit of them reach PostgreSQL.
    let parallel = futures_util::future::join_all((0..12).map(|i| {
        let console = &console;
        async move {
            try_sign_in(console, "console_test_parallel", &format!("guess-{i}"))
                .await
                .status
        }
    }))
    .await;
    let tried = parallel
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let held = parallel
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(tried <= 3 && tried + held == 12, "{parallel:?}");

    // ---- another Host (DNS rebinding) gets 421; an idle connection is closed
    let rebound = client()
        .get(format!("{}/sign-in", console.base))
        .header("host", "attacker.example:80")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    // At most 16 connections from one address: the 17th is closed at once, with no answer.
    let address = console.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(&address).await.unwrap();
    let _ = tokio::io::AsyncWriteExt::write_all(
        &mut extra,
        format!("GET /sign-in HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
    )
    .await;
    let mut answer = [0u8; 64];
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut extra, &mut answer),
    )
    .await;
    assert!(
        matches!(refused, Ok(Ok(0)) | Ok(Err(_))),
        "a 17th connection from one address was served: {refused:?}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = tokio::net::TcpStream::connect(console.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buffer),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a connection that sends nothing is kept open: {closed:?}"
    );
    // Another login from the same address is not blocked by it.
    let admin = Person::sign_in(&console, ADMIN).await;

    // ---- the admin's pages
    let (status, tenants) = admin.get("/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        tenants.contains(&tenant.to_string()),
        "the tenant is listed"
    );
    let (_, filtered) = admin.get(&format!("/tenants?q={xss_slug}")).await;
    assert!(
        filtered.contains("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;")
            || filtered.contains("&lt;script&gt;"),
        "{filtered}"
    );
    assert!(
        !filtered.contains("<script>") && !filtered.contains("<img src=x"),
        "the tenant name rendered as markup"
    );
    let (_, xss_page) = admin.get(&format!("/tenants/{xss}")).await;
    assert!(!xss_page.contains("<script>") && xss_page.contains("&lt;script&gt;"));
    let (status, page) = admin.get(&format!("/tenants/{tenant}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("env:…TURE"),
        "the credential reference is masked: {page}"
    );
    assert!(
        !page.contains("OPENAI_KEY_FIXTURE"),
        "the full reference is shown"
    );

    // ---- CSRF and origin on a state change
    let suspend = format!("/tenants/{tenant}/status");
    let (status, _) = admin
        .post_raw(&suspend, &[("action", "suspend")], &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a form without its token");
    let (status, _) = admin
        .post_raw(&suspend, &[("action", "suspend"), ("csrf", "forged")], &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a form with a wrong token");
    let csrf = admin.csrf.clone();
    let (status, _) = admin
        .post_raw(
            &suspend,
            &[("action", "suspend"), ("csrf", &csrf)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a form posted from another site"
    );
    assert_eq!(
        tenant_status(&mut su, tenant).await,
        "active",
        "a refused form changed something"
    );
    let (status, location) = admin.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{location}");
    assert_eq!(tenant_status(&mut su, tenant).await, "suspended");
    let (status, _) = admin.post(&suspend, &[("action", "resume")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(tenant_status(&mut su, tenant).await, "active");

    // ---- a temporary raise through its end date, recorded under the admin's login
    let last_day: String = sqlx::query_scalar("select (current_date + 3)::text")
        .fetch_one(&mut su)
        .await
        .unwrap();
    let raise = format!("/tenants/{tenant}/raise");
    let (status, _) = admin
        .post(
            &raise,
            &[
                ("dollar_limit", "777.5"),
                ("until", &last_day),
                ("reason", "launch week"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let raised: (String, String, String) = sqlx::query_as(
        "select b.dollar_limit::text, r.raised_by, r.reason from bulkhead.budgets b
         join bulkhead.budget_raises r on r.tenant_id = b.tenant_id and r.ended_at is null where b.tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(raised, ("777.5".into(), ADMIN.into(), "launch week".into()));
    let (_, page) = admin.get(&format!("/tenants/{tenant}")).await;
    assert!(
        page.contains("Raised until"),
        "the tenant page shows the raise"
    );
    let (status, refusal) = admin
        .post(
            &raise,
            &[
                ("dollar_limit", "1e9"),
                ("until", &last_day),
                ("reason", "x"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refusal}");

    // ---- an API key: its secret once, then never again
    let (status, created) = admin
        .post(
            &format!("/tenants/{tenant}/keys"),
            &[("name", "console key"), ("expires_on", "")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let start = created.find("id=\"secret\">").unwrap() + "id=\"secret\">".len();
    let secret = created[start..start + created[start..].find('<').unwrap()].to_string();
    assert!(secret.len() > 20, "{secret}");
    let hash_matches: bool = sqlx::query_scalar(
        "select exists (select from bulkhead.api_keys where tenant_id = $1 and key_hash = sha256(convert_to($2, 'UTF8')))",
    )
    .bind(tenant)
    .bind(&secret)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(hash_matches, "the shown secret is not the stored key");
    let (_, page) = admin.get(&format!("/tenants/{tenant}")).await;
    assert!(!page.contains(&secret), "the secret is shown again");
    let key: Uuid = sqlx::query_scalar(
        "select id from bulkhead.api_keys where tenant_id = $1 and name = 'console key'",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let (status, _) = admin
        .post(&format!("/tenants/{xss}/keys/{key}/revoke"), &[])
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a key revoked through another tenant's page"
    );
    let (status, _) = admin
        .post(&format!("/tenants/{tenant}/keys/{key}/revoke"), &[])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let revoked: bool =
        sqlx::query_scalar("select revoked_at is not null from bulkhead.api_keys where id = $1")
            .bind(key)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(revoked);

    // ---- cookies: tampered, from another console process, signed out
    let mut tampered = admin.cookie.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let forged = Person {
        cookie: String::from_utf8(tampered).unwrap(),
        csrf: admin.csrf.clone(),
        base: console.base.clone(),
    };
    let response = client()
        .get(format!("{}/tenants", console.base))
        .header(COOKIE, format!("bulkhead_console={}", forged.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::SEE_OTHER,
        "a tampered cookie opened a page"
    );
    let (status, _) = forged.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other = start_console(&[]).await;
    let elsewhere = Person::sign_in(&other, ADMIN).await;
    let transplanted = Person {
        cookie: elsewhere.cookie.clone(),
        csrf: elsewhere.csrf.clone(),
        base: console.base.clone(),
    };
    let (status, _) = transplanted.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "another console's session worked here"
    );
    assert_eq!(tenant_status(&mut su, tenant).await, "active");
    let leaving = Person::sign_in(&console, ADMIN).await;
    let (status, _) = leaving.post("/sign-out", &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = leaving.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a signed-out session still works"
    );

    // ---- support: status and prompts, no money, no credentials, no changes to tenants
    let support = Person::sign_in(&console, SUPPORT).await;
    let (status, page) = support.get("/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("Spend this period") && !page.contains('$'),
        "support sees money"
    );
    let (status, page) = support.get(&format!("/tenants/{tenant}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("env:") && !page.contains("Credentials"),
        "support sees credentials"
    );
    let (status, refusal) = support.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        refusal.contains("permission denied for function suspend_tenant"),
        "the database refused: {refusal}"
    );
    let (status, refusal) = support
        .post(&format!("/tenants/{tenant}/keys"), &[("name", "k")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refusal}");
    let (status, _) = support.get("/finance").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, refusal) = support.get("/finance.csv").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        refusal.contains("permission denied for function usage_by_tenant"),
        "{refusal}"
    );
    assert_eq!(tenant_status(&mut su, tenant).await, "active");

    // ---- finance: numbers and the export, nothing it could change
    let finance = Person::sign_in(&console, FINANCE).await;
    let (status, page) = finance.get("/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Spend this period"));
    let (status, refusal) = finance.post(&suspend, &[("action", "suspend")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(refusal.contains("permission denied"), "{refusal}");
    let (status, refusal) = finance
        .post(
            &format!("/tenants/{tenant}/raise"),
            &[
                ("dollar_limit", "999999"),
                ("until", "2099-01-01"),
                ("reason", "x"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        refusal.contains("permission denied for function raise_budget"),
        "{refusal}"
    );
    let (status, refusal) = finance
        .post("/tenants", &[("slug", "finance-made"), ("name", "x")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refusal}");
    let period: String = sqlx::query_scalar("select to_char(now() at time zone current_setting('bulkhead.billing_time_zone'), 'YYYY-MM')")
        .fetch_one(&mut su)
        .await
        .unwrap();
    let (status, page) = finance.get(&format!("/finance?period={period}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&tenant.to_string()));
    let (status, csv) = finance.get(&format!("/finance.csv?period={period}")).await;
    assert_eq!(status, StatusCode::OK);
    // The export is usage_by_tenant's rows for the month, and the CLI prints the same bytes.
    let mut finance_db = superuser_options()
        .username(FINANCE)
        .password(&password_of(FINANCE))
        .connect()
        .await
        .unwrap();
    let expected: Vec<(Uuid, String, String, i64, String)> = sqlx::query_as(
        "select tenant_id, provider, model, requests, cost_usd::text from bulkhead.usage_by_tenant(
             date_trunc('month', now() at time zone current_setting('bulkhead.billing_time_zone')) at time zone current_setting('bulkhead.billing_time_zone'),
             (date_trunc('month', now() at time zone current_setting('bulkhead.billing_time_zone')) + interval '1 month') at time zone current_setting('bulkhead.billing_time_zone'))",
    )
    .fetch_all(&mut finance_db)
    .await
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "period,tenant_id,slug,provider,model,requests,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,cost_usd");
    assert_eq!(lines.len() - 1, expected.len(), "{csv}");
    assert!(!expected.is_empty());
    for (line, row) in lines[1..].iter().zip(&expected) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(
            (cells[1], cells[3], cells[4], cells[5], cells[10]),
            (
                row.0.to_string().as_str(),
                row.1.as_str(),
                row.2.as_str(),
                row.3.to_string().as_str(),
                row.4.as_str()
            ),
            "{line}"
        );
    }
    let options = superuser_options();
    // `bulkhead report` as the finance login.
    let report = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["report", "--period", &period, "--format", format])
            .env(
                "DATABASE_URL",
                format!(
                    "postgres://{FINANCE}:{}@{}:{}/{}",
                    password_of(FINANCE),
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap()
                ),
            )
            .output()
            .unwrap()
    };
    let cli = report("csv");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        String::from_utf8(cli.stdout).unwrap(),
        csv,
        "the CLI and the console disagree"
    );
    let json = report("json");
    assert!(json.status.success());
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["period"], period.as_str());
    assert_eq!(
        json["rows"].as_array().unwrap().len(),
        expected.len(),
        "{json}"
    );
    assert_eq!(
        json["rows"][0]["cost_usd"],
        expected[0].4.as_str(),
        "exact decimals, as text"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["report", "--period", "2026-13"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a bad period is a usage error");

    // ---- no page carried a password
    for login in [ADMIN, SUPPORT, FINANCE] {
        for path in ["/tenants", &format!("/tenants/{tenant}"), "/finance"] {
            let person = match login {
                ADMIN => &admin,
                SUPPORT => &support,
                _ => &finance,
            };
            let (_, body) = person.get(path).await;
            assert!(
                !body.contains(&password_of(login)),
                "{path} shows {login}'s password"
            );
        }
    }
    finance_db.close().await.unwrap();
}
