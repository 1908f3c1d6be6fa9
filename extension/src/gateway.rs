//! `bulkhead._gateway_admit_in_memory`: the memory path of `bulkhead.gateway_admit`, the
//! gateway's admission of one call in one round trip.
//!
//! With memory admission on (bulkhead preloaded, `bulkhead.memory_admission`), a call runs no
//! SQL: what admission reads besides the budget (the API key, the tenant's status, the model's
//! provider and tokenizer, the credential reference, the tenant's output cap) is remembered by
//! the backend for at most a second, and forgotten at once when any of those tables changes
//! (their triggers bump the tenants generation, as limits and prices do). So a revoked key, a
//! suspended tenant or a rotated credential takes effect on the next call, and within a second
//! even for a change no trigger signals here (a COMMIT PREPARED). Calls that name a tenant
//! prompt or ask for a durable hold take `_gateway_admit_sql`, which reads every table on
//! every call; both paths give the same answers and the same errors. Refusals come back as a
//! row for gateway_admit (sql/gateway.sql) to raise: pgrx cannot raise a SQLSTATE outside the
//! standard list (PT401, PT403).

use crate::{admission, context, gucs};
use bulkhead_policy::sqlstate::{HasSqlState, SqlState};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a backend trusts what it read without a signal.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries per map before it is cleared (a flood of unknown keys must not grow a backend).
const CACHE_MAX: usize = 4096;
const LAST_USED_EVERY_MICROS: i64 = 60_000_000;

type Tenant = [u8; 16];

#[derive(Clone)]
struct ApiKey {
    tenant: Tenant,
    key_id: pgrx::Uuid,
    revoked: bool,
    expires_at: Option<i64>,
    /// When this backend last recorded (or saw) its use.
    last_used_at: Option<i64>,
}

#[derive(Clone)]
struct Credential {
    secret_ref: String,
    kind: String,
    provider_project_id: Option<String>,
}

#[derive(Clone)]
struct Model {
    /// The provider of the price row in effect; None: no price is in effect.
    provider: Option<String>,
    /// Every price row of the model names OpenAI: the gateway's tokenizer count applies.
    openai_tokenizer: bool,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    read_at: Option<Instant>,
    keys: HashMap<Vec<u8>, Option<ApiKey>>,
    /// A tenant's status; None: no such tenant.
    statuses: HashMap<Tenant, Option<String>>,
    models: HashMap<String, Model>,
    /// By tenant, provider and whether bulkhead.pending_key_calls is refuse (what a credential
    /// waiting for its key yields depends on it).
    credentials: HashMap<(Tenant, String, bool), Option<Credential>>,
    output_caps: HashMap<Tenant, Option<i32>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Runs `f` on the cache, emptied first if a change was signalled or it is older than the TTL.
fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let generation = crate::shared::tenants_generation().unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let fresh =
            c.generation == generation && c.read_at.is_some_and(|t| t.elapsed() < CACHE_TTL);
        if !fresh {
            *c = Cache {
                generation,
                read_at: Some(Instant::now()),
                ..Cache::default()
            };
        }
        f(&mut c)
    })
}

/// Looks `key` up in one of the cache's maps, else reads it with `read` and remembers it,
/// unless a change was signalled while it read (the value may predate it: used once, not kept).
fn cached<K, V>(
    map: impl Fn(&mut Cache) -> &mut HashMap<K, V>,
    key: K,
    read: impl FnOnce() -> V,
) -> V
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    let (hit, generation) = with_cache(|c| (map(c).get(&key).cloned(), c.generation));
    if let Some(hit) = hit {
        return hit;
    }
    let value = read();
    with_cache(|c| {
        if c.generation != generation {
            return;
        }
        let m = map(c);
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(key, value.clone());
    });
    value
}

#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("wire, endpoint, model, byte_input, choices, lease and durable_hold are required")]
    MissingArgument,
    #[error("exactly one of api_key_hash and jwt_tenant is required")]
    OneCredential,
    #[error("unknown gateway endpoint {0}/{1}")]
    UnknownEndpoint(String, String),
    #[error("input bounds must not be negative")]
    NegativeBounds,
    #[error("n must be between 1 and 128")]
    Choices,
    #[error("invalid api key")]
    InvalidKey,
    #[error("api key revoked")]
    RevokedKey,
    #[error("api key expired")]
    ExpiredKey,
    #[error("tenant_not_found")]
    TenantNotFound(pgrx::Uuid),
    #[error("tenant_suspended")]
    TenantSuspended(pgrx::Uuid),
    #[error("unknown model {}", quote_literal(.0))]
    UnknownModel(String),
    #[error("model {model} is served by {provider}, not through this endpoint", model = quote_literal(.0), provider = .1)]
    WrongWire(String, String),
    #[error("no credential for provider {0}")]
    NoCredential(String),
    #[error("the tenant's {0} credential waits for its key")]
    PendingKey(String),
    #[error("max_tokens must be at least 1")]
    OutputCap,
    #[error("max_tokens x n is too large")]
    OutputTooLarge,
}

impl HasSqlState for GatewayError {
    fn sqlstate(&self) -> SqlState {
        match self {
            GatewayError::MissingArgument => SqlState::NULL_VALUE_NOT_ALLOWED,
            GatewayError::InvalidKey | GatewayError::RevokedKey | GatewayError::ExpiredKey => {
                SqlState::UNAUTHENTICATED
            }
            GatewayError::TenantNotFound(_) | GatewayError::TenantSuspended(_) => {
                SqlState::TENANT_FORBIDDEN
            }
            GatewayError::UnknownModel(_) => SqlState::UNDEFINED_OBJECT,
            GatewayError::NoCredential(_) | GatewayError::PendingKey(_) => {
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            GatewayError::OneCredential
            | GatewayError::UnknownEndpoint(..)
            | GatewayError::NegativeBounds
            | GatewayError::Choices
            | GatewayError::WrongWire(..)
            | GatewayError::OutputCap
            | GatewayError::OutputTooLarge => SqlState::INVALID_PARAMETER_VALUE,
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            GatewayError::Choices => Some("Each choice is reserved at the output cap.".into()),
            GatewayError::TenantNotFound(tenant) => Some(format!(
                r#"{{"code": "tenant_not_found", "tenant_id": "{tenant}"}}"#
            )),
            GatewayError::TenantSuspended(tenant) => Some(format!(
                r#"{{"code": "tenant_suspended", "tenant_id": "{tenant}"}}"#
            )),
            GatewayError::UnknownModel(_) => Some(
                "No price is in effect for this model, so the gateway serves no call to it.".into(),
            ),
            GatewayError::WrongWire(_, provider) => Some(if provider == "anthropic" {
                "Anthropic models are served at POST /v1/messages, in Anthropic's format.".into()
            } else {
                "OpenAI-format models are served at POST /v1/chat/completions and /v1/embeddings."
                    .into()
            }),
            GatewayError::NoCredential(_) => Some(
                "Neither this tenant nor the shared pool has a credential for this provider."
                    .into(),
            ),
            GatewayError::PendingKey(_) => Some(
                "Its provisioned workspace has no key attached yet, and bulkhead.pending_key_calls is refuse."
                    .into(),
            ),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            GatewayError::UnknownModel(_) => {
                Some("GET /v1/models lists the models this tenant may use.".into())
            }
            GatewayError::WrongWire(..) => {
                Some("The gateway does not translate between wire formats.".into())
            }
            GatewayError::NoCredential(_) => {
                Some("bulkhead_admin: bulkhead.set_credential(...).".into())
            }
            GatewayError::PendingKey(_) => Some(
                "bulkhead_admin: attach a key reference with bulkhead.set_credential(...).".into(),
            ),
            _ => None,
        }
    }
}

/// PostgreSQL's quote_literal, for messages that name what the caller sent.
fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A refusal, as gateway_admit raises it: (sqlstate, message, detail, hint).
type Refusal = (String, String, Option<String>, Option<String>);

fn refusal(err: GatewayError) -> Refusal {
    (
        err.sqlstate().code().to_string(),
        err.to_string(),
        err.detail(),
        err.hint(),
    )
}

/// Admits one gateway call in memory (see gateway_admit in sql/gateway.sql). A row with a
/// sqlstate is a refusal for the caller to raise; a row without a reservation, a budget refusal
/// for `_raise_refusal`. Runs as bulkhead_meter, through gateway_admit only.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _gateway_admit_in_memory(
    api_key_hash: Option<Vec<u8>>,
    jwt_tenant: Option<pgrx::Uuid>,
    wire: Option<String>,
    endpoint: Option<String>,
    model: Option<String>,
    tokenized_input: Option<i64>,
    byte_input: Option<i64>,
    max_output_tokens: Option<i32>,
    choices: Option<i32>,
    lease: Option<Interval>,
) -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<pgrx::Uuid>),
        name!(key_id, Option<pgrx::Uuid>),
        name!(reservation, Option<pgrx::Uuid>),
        name!(provider, Option<String>),
        name!(output_cap, Option<i32>),
        name!(est_input_tokens, Option<i32>),
        name!(secret_ref, Option<String>),
        name!(credential_kind, Option<String>),
        name!(provider_project_id, Option<String>),
        name!(sqlstate, Option<String>),
        name!(message, Option<String>),
        name!(detail, Option<String>),
        name!(hint, Option<String>),
    ),
> {
    let call = Call {
        wire,
        endpoint,
        model,
        tokenized_input,
        byte_input,
        max_output_tokens,
        choices,
        lease,
    };
    TableIterator::once(match admit(api_key_hash, jwt_tenant, call) {
        Ok(a) => (
            Some(a.tenant),
            a.key_id,
            a.reservation,
            Some(a.provider),
            Some(a.output_cap),
            Some(a.est_input_tokens),
            Some(a.credential.secret_ref),
            Some(a.credential.kind),
            a.credential.provider_project_id,
            None,
            None,
            None,
            None,
        ),
        Err((sqlstate, message, detail, hint)) => (
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(sqlstate),
            Some(message),
            detail,
            hint,
        ),
    })
}

/// What the gateway asks to admit.
struct Call {
    wire: Option<String>,
    endpoint: Option<String>,
    model: Option<String>,
    tokenized_input: Option<i64>,
    byte_input: Option<i64>,
    max_output_tokens: Option<i32>,
    choices: Option<i32>,
    lease: Option<Interval>,
}

struct Admitted {
    tenant: pgrx::Uuid,
    key_id: Option<pgrx::Uuid>,
    /// None: a budget refusal, stored for `_raise_refusal`.
    reservation: Option<pgrx::Uuid>,
    provider: String,
    output_cap: i32,
    est_input_tokens: i32,
    credential: Credential,
}

fn admit(
    api_key_hash: Option<Vec<u8>>,
    jwt_tenant: Option<pgrx::Uuid>,
    call: Call,
) -> Result<Admitted, Refusal> {
    let (Some(wire), Some(endpoint), Some(model), Some(byte_input), Some(choices), Some(lease)) = (
        call.wire,
        call.endpoint,
        call.model,
        call.byte_input,
        call.choices,
        call.lease,
    ) else {
        return Err(refusal(GatewayError::MissingArgument));
    };
    if !matches!(wire.as_str(), "openai" | "anthropic")
        || !matches!(endpoint.as_str(), "chat" | "embeddings")
        || (endpoint == "embeddings" && wire != "openai")
    {
        return Err(refusal(GatewayError::UnknownEndpoint(wire, endpoint)));
    }
    if byte_input < 0 || call.tokenized_input.is_some_and(|t| t < 0) {
        return Err(refusal(GatewayError::NegativeBounds));
    }
    if !(1..=128).contains(&choices) {
        return Err(refusal(GatewayError::Choices));
    }
    // As in the SQL path: another session holding the tenant's budget row must not stall the
    // gateway's shared sessions (55P03 after 200 ms).
    gucs::set_locally(c"lock_timeout", c"200ms");

    let (tenant, key) = authenticate(api_key_hash, jwt_tenant)?;
    context::enter_tenant(Some(tenant));
    let key_id = key.as_ref().map(|(k, _)| k.key_id);
    if let Some((key, hash)) = key {
        let now = now();
        if key
            .last_used_at
            .is_none_or(|at| at < now - LAST_USED_EVERY_MICROS)
        {
            // In the tenant's context: the key's row is the tenant's, under row level security.
            record_use(&key, &hash, now);
        }
    }

    let found = model_of(&model);
    let Some(provider) = found.provider else {
        return Err(refusal(GatewayError::UnknownModel(model)));
    };
    if (provider == "anthropic") != (wire == "anthropic") {
        return Err(refusal(GatewayError::WrongWire(model, provider)));
    }
    let tenant_bytes = *tenant.as_bytes();
    let credential = cached(
        |c| &mut c.credentials,
        (
            tenant_bytes,
            provider.clone(),
            crate::gucs::pending_key_calls_refuse(),
        ),
        || read_credential(tenant, &provider),
    );
    let Some(credential) = credential else {
        return Err(refusal(GatewayError::NoCredential(provider)));
    };
    if credential.kind == PENDING_KEY {
        return Err(refusal(GatewayError::PendingKey(provider)));
    }

    let (output_cap, reserved_output) = if endpoint == "embeddings" {
        (0, 0)
    } else {
        let cap = match call.max_output_tokens {
            Some(cap) => cap,
            None => cached(
                |c| &mut c.output_caps,
                tenant_bytes,
                || read_output_cap(tenant),
            )
            .unwrap_or(1024),
        };
        if cap < 1 {
            return Err(refusal(GatewayError::OutputCap));
        }
        let Ok(reserved) = i32::try_from(i64::from(cap) * i64::from(choices)) else {
            return Err(refusal(GatewayError::OutputTooLarge));
        };
        (cap, reserved)
    };
    let est = match call.tokenized_input {
        Some(tokens) if found.openai_tokenizer => tokens,
        _ => byte_input,
    };
    let est_input_tokens = est.min(100_000_000) as i32;

    let reservation = admission::_admit_in_memory(
        Some(&model),
        Some(est_input_tokens),
        Some(reserved_output),
        Some(lease),
    );
    if let Some(reservation) = reservation {
        if !admission::_gateway_hold(reservation) {
            // Memory full for this tenant: its reservation went to the table.
            hold_row(tenant, reservation);
        }
    }
    Ok(Admitted {
        tenant,
        key_id,
        reservation,
        provider,
        output_cap,
        est_input_tokens,
        credential,
    })
}

/// The caller's tenant (and key, with its hash), or a refusal (PT401, PT403).
fn authenticate(
    api_key_hash: Option<Vec<u8>>,
    jwt_tenant: Option<pgrx::Uuid>,
) -> Result<(pgrx::Uuid, Option<(ApiKey, Vec<u8>)>), Refusal> {
    let (tenant, key_id) = match (api_key_hash, jwt_tenant) {
        (Some(hash), None) => {
            let key = cached(|c| &mut c.keys, hash.clone(), || read_key(&hash));
            let Some(key) = key else {
                return Err(refusal(GatewayError::InvalidKey));
            };
            if key.revoked {
                return Err(refusal(GatewayError::RevokedKey));
            }
            let now = now();
            if key.expires_at.is_some_and(|at| at <= now) {
                return Err(refusal(GatewayError::ExpiredKey));
            }
            (pgrx::Uuid::from_bytes(key.tenant), Some((key, hash)))
        }
        (None, Some(tenant)) => (tenant, None),
        _ => return Err(refusal(GatewayError::OneCredential)),
    };
    let status = cached(
        |c| &mut c.statuses,
        *tenant.as_bytes(),
        || read_status(tenant),
    );
    match status.as_deref() {
        None => Err(refusal(GatewayError::TenantNotFound(tenant))),
        Some("active") => Ok((tenant, key_id)),
        Some(_) => Err(refusal(GatewayError::TenantSuspended(tenant))),
    }
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn read_key(hash: &[u8]) -> Option<ApiKey> {
    Spi::connect(|client| {
        let table = client.select(
            "select k.tenant_id, k.id, k.revoked_at is not null, bulkhead._micros(k.expires_at), \
                    bulkhead._micros(k.last_used_at) \
             from bulkhead.api_keys k where k.key_hash = $1 limit 1",
            Some(1),
            &[hash.to_vec().into()],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = table.first();
        let (Some(tenant), Some(key_id)) = (row.get::<pgrx::Uuid>(1)?, row.get::<pgrx::Uuid>(2)?)
        else {
            return Ok(None);
        };
        Ok(Some(ApiKey {
            tenant: *tenant.as_bytes(),
            key_id,
            revoked: row.get::<bool>(3)?.unwrap_or(true),
            expires_at: row.get(4)?,
            last_used_at: row.get(5)?,
        }))
    })
    .unwrap_or_else(|e| error!("reading an api key: {e}"))
}

/// Last use, at most once a minute per key, never waiting on another request's update; the
/// cache remembers it so that this backend does not try again within the minute.
fn record_use(key: &ApiKey, hash: &[u8], now: i64) {
    Spi::connect_mut(|client| {
        client.update(
            "update bulkhead.api_keys x set last_used_at = pg_catalog.clock_timestamp() \
             where x.tenant_id = $1 and x.id = ( \
                 select y.id from bulkhead.api_keys y \
                 where y.tenant_id = $1 and y.id = $2 \
                   and (y.last_used_at is null or y.last_used_at < pg_catalog.clock_timestamp() - interval '1 minute') \
                 for update skip locked)",
            None,
            &[pgrx::Uuid::from_bytes(key.tenant).into(), key.key_id.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("recording an api key's use: {e}"));
    with_cache(|c| {
        if let Some(Some(k)) = c.keys.get_mut(hash) {
            k.last_used_at = Some(now);
        }
    });
}

fn read_status(tenant: pgrx::Uuid) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "select t.status from bulkhead.tenants t where t.id = $1",
        &[tenant.into()],
    )
    .ok()
    .flatten()
}

fn model_of(model: &str) -> Model {
    cached(
        |c| &mut c.models,
        model.to_string(),
        || {
            Spi::connect(|client| {
            let table = client.select(
                "select (select p.provider from bulkhead.prices p \
                         where p.model = $1 and p.effective_from <= pg_catalog.clock_timestamp() \
                         order by p.effective_from desc limit 1), \
                        coalesce((select pg_catalog.bool_and(p.provider = 'openai') from bulkhead.prices p \
                                  where p.model = $1), false)",
                Some(1),
                &[model.into()],
            )?;
            let row = table.first();
            Ok::<_, pgrx::spi::Error>(Model {
                provider: row.get(1)?,
                openai_tokenizer: row.get(2)?.unwrap_or(false),
            })
        })
        .unwrap_or_else(|e| error!("reading a model's price: {e}"))
        },
    )
}

/// What Credential::kind says of a provisioned credential still waiting for its key.
const PENDING_KEY: &str = "pending_key";

/// The tenant's own credential for the provider, else the shared pool's (credential_for_tenant).
/// A credential waiting for its key (pending_key) yields the shared pool's, or, when
/// bulkhead.pending_key_calls is refuse, none: the call is refused.
fn read_credential(tenant: pgrx::Uuid, provider: &str) -> Option<Credential> {
    Spi::connect(|client| {
        let table = client.select(
            "select c.secret_ref, c.kind, c.provider_project_id from ( \
                 select t.secret_ref, t.kind, t.provider_project_id, 1 as rank \
                 from bulkhead.tenant_credentials t where t.tenant_id = $1 and t.provider = $2 \
                   and (t.status = 'active' \
                        or pg_catalog.current_setting('bulkhead.pending_key_calls', true) = 'refuse') \
                 union all \
                 select s.secret_ref, 'shared_pool', s.provider_project_id, 2 \
                 from bulkhead.shared_credentials s where s.provider = $2) c \
             order by c.rank limit 1",
            Some(1),
            &[tenant.into(), provider.into()],
        )?;
        if table.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let row = table.first();
        // The tenant's own row without a key: it waits for one, and calls are refused.
        let kind = match row.get::<String>(1)? {
            Some(_) => row.get::<String>(2).ok().flatten().unwrap_or_default(),
            None => PENDING_KEY.to_string(),
        };
        Ok(Some(Credential {
            secret_ref: row.get::<String>(1)?.unwrap_or_default(),
            kind,
            provider_project_id: row.get(3).ok().flatten(),
        }))
    })
    .unwrap_or_else(|e| error!("reading a credential reference: {e}"))
}

/// The tenant's output cap for calls that name none, else the platform's.
fn read_output_cap(tenant: pgrx::Uuid) -> Option<i32> {
    Spi::get_one_with_args::<i32>(
        "select coalesce( \
             (select s.default_max_output_tokens from bulkhead.tenant_settings s where s.tenant_id = $1), \
             (select d.default_max_output_tokens from bulkhead.budget_defaults d))",
        &[tenant.into()],
    )
    .ok()
    .flatten()
}

/// A reservation the table holds (memory full): marked as a gateway call there, committed
/// synchronously, as the SQL path does.
fn hold_row(tenant: pgrx::Uuid, reservation: pgrx::Uuid) {
    Spi::connect_mut(|client| {
        client.update(
            "update bulkhead.reservations x set queued = true, bill_on_expiry = true \
             where x.tenant_id = $1 and x.id = $2",
            None,
            &[tenant.into(), reservation.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| error!("marking a gateway reservation: {e}"));
    gucs::set_locally(c"synchronous_commit", c"on");
}
