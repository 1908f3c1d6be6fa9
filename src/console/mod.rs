//! `bulkhead console`: the web control plane for customer success and finance.
//!
//! Server-rendered HTML (minijinja templates compiled into the binary, auto-escaped) and no
//! JavaScript at all, so the Content-Security-Policy allows no script. People sign in with their
//! own PostgreSQL logins; each session keeps a small pool that connects as that login, and every
//! page reads and writes through it: the database's grants and row level security decide what a
//! bulkhead_admin, bulkhead_support or bulkhead_finance login may see and do. The console holds
//! no connection of its own.

mod pages;
mod session;

use axum::extract::{ConnectInfo, Form, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use session::{FailureLimiter, Roles, Session, Sessions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub allowed_hosts: Vec<String>,
    pub secure_cookies: bool,
    pub idle: Duration,
    pub lifetime: Duration,
    pub sign_in_failures: u32,
    pub header_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("DATABASE_URL: {0}")]
    DatabaseUrl(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("template {0}: {1}")]
    Template(&'static str, minijinja::Error),
}

pub struct Console {
    /// Host, port and database of every session's connections (no user, no password).
    target: PgConnectOptions,
    templates: minijinja::Environment<'static>,
    sessions: Sessions,
    /// Failed sign-ins per login name, and (ten times as many) per client address.
    login_failures: FailureLimiter,
    client_failures: FailureLimiter,
    /// Sign-ins in flight: each costs the server a SCRAM exchange.
    sign_ins: tokio::sync::Semaphore,
    secure_cookies: bool,
    /// Host headers answered (lowercase); empty: any.
    allowed_hosts: Vec<String>,
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("sign_in.html", include_str!("templates/sign_in.html")),
    ("error.html", include_str!("templates/error.html")),
    ("tenants.html", include_str!("templates/tenants.html")),
    ("tenant.html", include_str!("templates/tenant.html")),
    (
        "key_created.html",
        include_str!("templates/key_created.html"),
    ),
    ("finance.html", include_str!("templates/finance.html")),
    ("prompts.html", include_str!("templates/prompts.html")),
    ("prompt.html", include_str!("templates/prompt.html")),
    ("evals.html", include_str!("templates/evals.html")),
    ("eval_run.html", include_str!("templates/eval_run.html")),
    ("delete.html", include_str!("templates/delete.html")),
    ("receipts.html", include_str!("templates/receipts.html")),
    ("receipt.html", include_str!("templates/receipt.html")),
];
const STYLESHEET: &str = include_str!("static/console.css");

/// No script, no plugin, no framing; styles and images from the console itself; forms post only
/// back to it.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn run(config: Config) -> Result<(), ConsoleError> {
    let target = PgConnectOptions::from_str(&config.database_url)
        .map_err(|e| ConsoleError::DatabaseUrl(e.to_string()))?;
    let mut templates = minijinja::Environment::new();
    for (name, source) in TEMPLATES {
        templates
            .add_template(name, source)
            .map_err(|e| ConsoleError::Template(name, e))?;
    }
    let console = Arc::new(Console {
        target,
        templates,
        sessions: Sessions::new(config.idle, config.lifetime),
        login_failures: FailureLimiter::new(config.sign_in_failures, Duration::from_secs(15 * 60)),
        client_failures: FailureLimiter::new(
            config.sign_in_failures.saturating_mul(10),
            Duration::from_secs(15 * 60),
        ),
        sign_ins: tokio::sync::Semaphore::new(4),
        secure_cookies: config.secure_cookies,
        allowed_hosts: allowed_hosts(&config),
    });
    if console.allowed_hosts.is_empty() {
        tracing::warn!(target: "bulkhead::console", "listening beyond loopback without --allowed-host: any Host header is answered");
    }
    let app = router(console);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ConsoleError::Listen(config.listen, e))?;
    let local = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(target: "bulkhead::console", "listening on http://{local}");
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            crate::http::wait_for_signal().await;
            shutdown.cancel();
        });
    }
    // 256 connections, at most 16 from one address: people behind one NAT still get in, one
    // host cannot hold them all.
    crate::http::serve(
        listener,
        app,
        &shutdown,
        256,
        config.header_timeout,
        Some(16),
    )
    .await;
    tracing::info!(target: "bulkhead::console", "stopped");
    Ok(())
}

/// The Host headers to answer: the configured ones, else a loopback listener's own names.
fn allowed_hosts(config: &Config) -> Vec<String> {
    if !config.allowed_hosts.is_empty() {
        return config
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
    }
    let port = config.listen.port();
    if config.listen.ip().is_loopback() {
        vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
    } else {
        Vec::new()
    }
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/tenants") }))
        .route("/console.css", get(stylesheet))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .route("/sign-out", post(sign_out))
        .route("/tenants", get(pages::tenants).post(pages::create_tenant))
        .route("/tenants/{id}", get(pages::tenant))
        .route("/tenants/{id}/status", post(pages::set_status))
        .route("/tenants/{id}/keys", post(pages::create_key))
        .route("/tenants/{id}/raise", post(pages::raise_budget))
        .route("/tenants/{id}/keys/{key}/revoke", post(pages::revoke_key))
        .route("/tenants/{id}/usage.svg", get(pages::usage_chart))
        .route("/tenants/{id}/prompts", get(pages::prompts))
        .route("/tenants/{id}/prompts/{template}", get(pages::prompt))
        .route(
            "/tenants/{id}/prompts/{template}/activate",
            post(pages::activate),
        )
        .route(
            "/tenants/{id}/prompts/{template}/rollback",
            post(pages::rollback),
        )
        .route("/tenants/{id}/evals/{run}", get(pages::eval_run))
        .route(
            "/tenants/{id}/delete",
            get(pages::delete_page).post(pages::delete_tenant),
        )
        .route("/evals", get(pages::evals))
        .route("/receipts", get(pages::receipts))
        .route("/receipts/{id}", get(pages::receipt))
        .route("/finance", get(pages::finance))
        .route("/finance.csv", get(pages::finance_csv))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "No such page.") })
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(console)
}

/// Before any handler: the Host must be one the console answers (DNS rebinding), and the
/// request must finish within REQUEST_TIMEOUT (a body that never comes holds no slot).
async fn guard(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !console.allowed_hosts.is_empty() {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.to_ascii_lowercase());
        if !host.is_some_and(|h| console.allowed_hosts.contains(&h)) {
            return failure(
                StatusCode::MISDIRECTED_REQUEST,
                "This console does not answer for that host name.",
            );
        }
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => failure(StatusCode::REQUEST_TIMEOUT, "The request took too long."),
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every response: the strict CSP, no sniffing, no framing, no referrer to other sites, and no caching (pages
/// show spend, and a new key's secret once).
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // The time the console took (its queries included), for bench/console and browsers' tools.
    if let Ok(value) = HeaderValue::from_str(&format!(
        "app;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        headers.insert(header::HeaderName::from_static("server-timing"), value);
    }
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" on its own
    // form posts, and the origin check below needs the real one.
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// A page saying what went wrong, with its status.
pub fn failure(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code}</title>\
         <link rel=\"stylesheet\" href=\"/console.css\"></head><body><main class=\"narrow\">\
         <h1>{code}</h1><p class=\"error\">{message}</p><p><a href=\"/tenants\">Tenants</a></p></main></body></html>",
        code = status.as_u16(),
        message = crate::eval::escape(message)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A database error as the person should see it: refusals (permissions, bad input, state) with
/// PostgreSQL's own message, which names no secret; anything else as an internal error, logged.
pub fn database_failure(err: sqlx::Error) -> Response {
    if let sqlx::Error::Database(db) = &err {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        let status = match code.as_str() {
            "42501" => Some(StatusCode::FORBIDDEN),
            c if c.starts_with("22") || c.starts_with("23") => {
                Some(StatusCode::UNPROCESSABLE_ENTITY)
            }
            c if c.starts_with("55")
                || c == "P0001"
                || c == "42704"
                || c == "40001"
                || c == "40P01" =>
            {
                Some(StatusCode::CONFLICT)
            }
            c if c.starts_with("PT") => Some(StatusCode::CONFLICT),
            _ => None,
        };
        if let Some(status) = status {
            // Bulkhead's own refusals carry a hint written for people (the eval gate's, say).
            let hint = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.hint())
                .map(|h| format!(" {h}"))
                .unwrap_or_default();
            return failure(
                status,
                &format!("The database refused: {} ({code}).{hint}", db.message()),
            );
        }
    }
    tracing::error!(target: "bulkhead::console", "database error: {err}");
    failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The database call failed; the console's log has the detail.",
    )
}

impl Console {
    pub fn render(&self, name: &str, context: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(context))
        {
            Ok(html) => Html(html).into_response(),
            Err(err) => {
                tracing::error!(target: "bulkhead::console", "rendering {name}: {err:#}");
                failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The page could not be rendered.",
                )
            }
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        ))
        .expect("cookie values are base64url")
    }
}

pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A request from a signed-in person. For anything but GET and HEAD, the form's CSRF token must
/// be the session's, and a browser's Origin (when sent) this console's.
pub struct Signed(pub Arc<Session>);

pub enum Refusal {
    SignIn,
    Forbidden(&'static str),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/sign-in").into_response(),
            Refusal::Forbidden(why) => failure(StatusCode::FORBIDDEN, why),
        }
    }
}

impl Console {
    pub fn signed(&self, headers: &HeaderMap, method: &Method) -> Result<Signed, Refusal> {
        let session = cookie_value(headers, session::COOKIE).and_then(|v| self.sessions.find(v));
        match session {
            Some(session) => Ok(Signed(session)),
            None if method == Method::GET || method == Method::HEAD => Err(Refusal::SignIn),
            None => Err(Refusal::Forbidden(
                "Not signed in, or the session ended: sign in again.",
            )),
        }
    }

    /// A state-changing request: a signed-in session, the same origin, and the session's CSRF
    /// token.
    pub fn posted(&self, headers: &HeaderMap, csrf: &str) -> Result<Signed, Refusal> {
        let signed = self.signed(headers, &Method::POST)?;
        if !same_origin(headers) {
            return Err(Refusal::Forbidden("The form was posted from another site."));
        }
        if !signed.0.csrf_matches(csrf) {
            return Err(Refusal::Forbidden(
                "The form's security token is missing or wrong: reload the page and try again.",
            ));
        }
        Ok(signed)
    }
}

/// Browsers send Origin (and Sec-Fetch-Site) on every POST: refuse one from elsewhere.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not a browser, or an old one: the CSRF token still decides
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .map(|(_, authority)| authority.eq_ignore_ascii_case(host))
        .unwrap_or(false)
}

// ------------------------------------------------------------------ sign-in

#[derive(serde::Deserialize)]
struct SignInForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn sign_in_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if console.signed(&headers, &Method::GET).is_ok() {
        return Redirect::to("/tenants").into_response();
    }
    sign_in_form(&console, StatusCode::OK, "", None)
}

/// The form, with a fresh pre-session token in a cookie and in the form (double submit).
fn sign_in_form(
    console: &Console,
    status: StatusCode,
    login: &str,
    error: Option<&str>,
) -> Response {
    let token = session::random_token();
    let signed = console.sessions.sign("pre", &token);
    let mut response = console.render(
        "sign_in.html",
        minijinja::context! { login => login, error => error, csrf => signed },
    );
    *response.status_mut() = status;
    response.headers_mut().append(
        header::SET_COOKIE,
        console.cookie(session::PRE_COOKIE, &signed, Duration::from_secs(3600)),
    );
    response
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    // Login CSRF: the token in the form must be the one this browser's cookie holds, signed here.
    let pre = cookie_value(&headers, session::PRE_COOKIE).unwrap_or("");
    if !same_origin(&headers)
        || console.sessions.verify("pre", &form.csrf).is_none()
        || form.csrf.as_bytes() != pre.as_bytes()
    {
        return failure(
            StatusCode::FORBIDDEN,
            "The sign-in form's security token is missing or wrong: reload the page and try again.",
        );
    }
    let login = form.login.trim().to_string();
    if login.is_empty() || login.len() > 63 || login.chars().any(|c| c.is_control()) {
        return sign_in_form(
            &console,
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            Some("Enter a PostgreSQL login name (at most 63 characters)."),
        );
    }
    if form.password.is_empty() || form.password.len() > 1024 || form.password.contains('\0') {
        return sign_in_form(
            &console,
            StatusCode::UNPROCESSABLE_ENTITY,
            &login,
            Some("Enter the login's password."),
        );
    }
    let [login_key, client_key] = session::limiter_keys(&login, client.ip());
    // Counted before the attempt and taken back if it succeeds: guesses sent in parallel count.
    // The address first: a blocked address adds no login name to the table.
    let begun = console.client_failures.begin(&client_key).and_then(|()| {
        console.login_failures.begin(&login_key).inspect_err(|_| {
            // Not tried: the address's count goes back.
            console.client_failures.forgive(&client_key);
        })
    });
    if let Err(wait) = begun {
        let mut response = sign_in_form(
            &console,
            StatusCode::TOO_MANY_REQUESTS,
            &login,
            Some(&format!(
                "Too many failed sign-ins: try again in {} minutes.",
                wait.div_ceil(60)
            )),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    let Ok(_slot) = console.sign_ins.acquire().await else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console is shutting down.",
        );
    };
    match open_session(&console, &login, &form.password).await {
        Ok((roles, pool)) => {
            console.login_failures.forgive(&login_key);
            console.client_failures.forgive(&client_key);
            tracing::info!(target: "bulkhead::console", login = %login, client = %client.ip(), "signed in");
            let cookie = console.sessions.start(login, roles, pool);
            let mut response = Redirect::to("/tenants").into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                console.cookie(session::COOKIE, &cookie, console.sessions.lifetime()),
            );
            headers.append(
                header::SET_COOKIE,
                console.cookie(session::PRE_COOKIE, "", Duration::ZERO),
            );
            response
        }
        Err(refused) => {
            // An unreachable database is nobody's failed attempt.
            if refused.status == StatusCode::SERVICE_UNAVAILABLE {
                console.login_failures.forgive(&login_key);
                console.client_failures.forgive(&client_key);
            }
            tracing::warn!(target: "bulkhead::console", login = %login, client = %client.ip(), "sign-in refused: {}", refused.log);
            sign_in_form(&console, refused.status, &login, Some(&refused.shown))
        }
    }
}

struct SignInRefused {
    status: StatusCode,
    /// What the person reads: never whether the login exists.
    shown: String,
    log: String,
}

/// Connects as the login with its password and checks the connection: PostgreSQL must have
/// verified the password (a trusted or peer connection proves nothing), the login must not
/// bypass row level security, and it must be in one of the console's roles.
async fn open_session(
    console: &Console,
    login: &str,
    password: &str,
) -> Result<(Roles, sqlx::PgPool), SignInRefused> {
    // Every refusal after the connection reads the same as a wrong password: a different page
    // for "right password, wrong kind of login" would tell a guesser the password is right.
    // The log says which it was.
    let wrong = |log: String| SignInRefused {
        status: StatusCode::UNAUTHORIZED,
        shown: "Sign-in failed: wrong login or password, or this login may not use the console."
            .into(),
        log,
    };
    let options = console
        .target
        .clone()
        .username(login)
        .password(password)
        .application_name("bulkhead console")
        .disable_statement_logging();
    let mut conn = options.connect().await.map_err(|e| match &e {
        // Any refusal by the server (a wrong password, no CONNECT on the database, the login's
        // connection limit) reads as a wrong password and counts: a different answer would
        // confirm the password. Only an unreachable server is a 503.
        sqlx::Error::Database(db) => wrong(format!(
            "{} ({})",
            db.message(),
            db.code().unwrap_or_default()
        )),
        _ => SignInRefused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            shown: "The database cannot be reached; try again shortly.".into(),
            log: e.to_string(),
        },
    })?;
    let checked: Result<(Option<String>, bool, bool, bool, bool, bool), sqlx::Error> =
        sqlx::query_as(
            "select system_user::text, r.rolsuper, r.rolbypassrls,
                pg_catalog.pg_has_role(r.oid, 'bulkhead_admin', 'USAGE'),
                pg_catalog.pg_has_role(r.oid, 'bulkhead_support', 'USAGE'),
                pg_catalog.pg_has_role(r.oid, 'bulkhead_finance', 'USAGE')
         from pg_catalog.pg_roles r where r.rolname = session_user",
        )
        .fetch_one(&mut conn)
        .await;
    use sqlx::Connection;
    let _ = conn.close().await;
    let (system_user, superuser, bypassrls, admin, support, finance) =
        checked.map_err(|e| SignInRefused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            shown:
                "The database could not check this login; is the bulkhead extension installed here?"
                    .into(),
            log: e.to_string(),
        })?;
    // system_user is "<method>:<identity>", and NULL when the server trusted the connection.
    let method = system_user
        .as_deref()
        .and_then(|s| s.split_once(':'))
        .map(|(m, _)| m.to_string());
    const PASSWORD_METHODS: &[&str] =
        &["scram-sha-256", "md5", "password", "ldap", "radius", "pam"];
    if !method
        .as_deref()
        .is_some_and(|m| PASSWORD_METHODS.contains(&m))
    {
        return Err(wrong(format!(
            "PostgreSQL did not check a password (authentication method {}): the console signs in only logins whose password PostgreSQL verified",
            method.as_deref().unwrap_or("trust")
        )));
    }
    if superuser || bypassrls {
        return Err(wrong(
            "a superuser or BYPASSRLS login: the console runs only as logins the database confines"
                .into(),
        ));
    }
    if !(admin || support || finance) {
        return Err(wrong(
            "in none of bulkhead_admin, bulkhead_support and bulkhead_finance".into(),
        ));
    }
    // Few connections, soon closed: a login disabled or whose password changed loses its
    // sessions' connections within max_lifetime (new ones must authenticate again).
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(30))
        .max_lifetime(Duration::from_secs(300))
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    Ok((
        Roles {
            admin,
            support,
            finance,
        },
        pool,
    ))
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refusal) = console.posted(&headers, &form.csrf) {
        return refusal.into_response();
    }
    if let Some(value) = cookie_value(&headers, session::COOKIE) {
        console.sessions.end(value);
    }
    let mut response = Redirect::to("/sign-in").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        console.cookie(session::COOKIE, "", Duration::ZERO),
    );
    response
}
