//! Property tests: the policy crate's parsers and arithmetic on inputs nobody planned for. Each
//! property names what must hold for every input proptest draws (and shrinks a failure to the
//! smallest input that breaks it). Run with `cargo test -p bulkhead-policy --test properties`;
//! PROPTEST_CASES raises the number of cases per property (256 by default).

use bulkhead_policy::admission::{self, Buckets, BudgetLine, Limits, Request};
use bulkhead_policy::context::{parse_tenant_id, resolve_tenant, ClaimPath};
use bulkhead_policy::prompts::{check_skeleton, CompiledPrompt};
use bulkhead_policy::usage::{cost, normalize, normalize_text, Provider, Rates};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// Numbers as providers (or an attacker relaying a usage object) might send them.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..1_000_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!(2.5)),
        Just(json!("NaN")),
        Just(json!("Infinity")),
        Just(json!("12")),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!([1, 2])),
        Just(json!({"nested": 1})),
    ]
}

const USAGE_KEYS: &[&str] = &[
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "ephemeral_5m_input_tokens",
    "ephemeral_1h_input_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "cache_creation",
    "input_tokens_details",
    "output_tokens_details",
];

/// Usage objects of both providers' shapes, with fields missing, mistyped, nested or huge.
fn usage_object() -> impl Strategy<Value = Value> {
    let leaf = number();
    leaf.prop_recursive(3, 32, 8, |inner| {
        prop::collection::vec((prop::sample::select(USAGE_KEYS), inner), 0..8).prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
    })
}

/// Well-formed usage objects of each provider's shape, with counts from small to absurd.
fn shaped_usage() -> impl Strategy<Value = Value> {
    let count = prop_oneof![
        8 => 0u64..100_000,
        1 => any::<u64>(),
        1 => prop_oneof![Just(100_000_000u64), Just(100_000_001u64)],
    ];
    (
        count.clone(),
        count.clone(),
        count.clone(),
        count,
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, openai)| {
            // Cached and reasoning tokens are part of the totals, as OpenAI counts them.
            let (c, d) = if openai { (c.min(a), d.min(b)) } else { (c, d) };
            if openai {
                json!({"prompt_tokens": a, "completion_tokens": b,
                   "prompt_tokens_details": {"cached_tokens": c},
                   "completion_tokens_details": {"reasoning_tokens": d}})
            } else {
                json!({"input_tokens": a, "output_tokens": b,
                   "cache_read_input_tokens": c, "cache_creation_input_tokens": d})
            }
        })
}

/// Usage objects: well-formed ones and hostile ones.
fn any_usage() -> impl Strategy<Value = Value> {
    prop_oneof![shaped_usage(), usage_object()]
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::OpenAi),
        Just(Provider::Anthropic),
        Just(Provider::OpenAiCompatible)
    ]
}

fn rates() -> impl Strategy<Value = Rates> {
    let rate = (0u64..1_000_000_000).prop_map(|n| Decimal::new(n as i64, 6));
    (
        rate.clone(),
        rate.clone(),
        prop::option::of(rate.clone()),
        prop::option::of(rate),
    )
        .prop_map(|(input, output, cached_input, cache_write)| Rates {
            input,
            output,
            cached_input,
            cache_write,
        })
}

proptest! {
    // No failure files: a failure prints its shrunk input, and the test is rerun with it.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// A usage object never panics the parser; what it accepts is counted in bounds, and its
    /// cost is never negative and never panics, whatever the rates.
    #[test]
    fn usage_objects_parse_into_bounded_counts_and_a_cost(provider in provider(), usage in any_usage(), rates in rates()) {
        if let Ok(counted) = normalize(provider, &usage) {
            for n in [counted.input, counted.cached_input, counted.cache_write, counted.output, counted.reasoning] {
                prop_assert!(n <= bulkhead_policy::usage::MAX_TOKENS_PER_CALL, "{n} in {usage}");
            }
            if let Ok(usd) = cost(&counted, &rates) {
                prop_assert!(usd >= Decimal::ZERO);
            }
        }
    }

    /// Any text, including truncated and invalid JSON, is refused or parsed, never a panic.
    #[test]
    fn usage_text_never_panics(provider in provider(), text in ".{0,200}", usage in usage_object(), cut in 0usize..400) {
        let _ = normalize_text(provider, &text);
        let whole = usage.to_string();
        let cut = whole.char_indices().map(|(i, _)| i).take_while(|&i| i <= cut).last().unwrap_or(0);
        let _ = normalize_text(provider, &whole[..cut]);
    }

    /// A claim path either parses (and never reaches user_metadata) or is refused; a claims
    /// document yields a tenant only from the exact path, and only a well-formed non-nil uuid.
    #[test]
    fn claim_paths_and_documents(path in "[a-zA-Z_ .]{0,40}", claims in ".{0,200}", id in any::<u128>()) {
        if let Ok(parsed) = ClaimPath::parse(&path) {
            prop_assert!(!path.to_ascii_lowercase().split('.').any(|s| s == "user_metadata"));
            let _ = parsed.tenant_in(&claims);
        }
        let tenant = uuid::Uuid::from_u128(id);
        let path = ClaimPath::default();
        let doc = json!({"app_metadata": {"tenant_id": tenant.to_string()}}).to_string();
        prop_assert_eq!(path.tenant_in(&doc), parse_tenant_id(&tenant.to_string()));
        let user_doc = json!({"user_metadata": {"tenant_id": tenant.to_string()}}).to_string();
        prop_assert_eq!(path.tenant_in(&user_doc), None);
        // A setting that disagrees with the JWT yields no tenant at all.
        let other = uuid::Uuid::from_u128(id.wrapping_add(1));
        if !other.is_nil() && !tenant.is_nil() {
            prop_assert_eq!(resolve_tenant(Some(&other.to_string()), Some(&doc), &path), None);
        }
    }

    /// Random template sources are validated or refused, never a panic; an accepted skeleton
    /// renders random values within the output limit or refuses with an error.
    #[test]
    fn templates_validate_and_render_within_limits(
        body in prop_oneof![
            ".{0,120}",
            prop::collection::vec(prop::sample::select(&[
                "{{ ", " }}", "{% ", " %}", "slots.", "vars.", "name", "q", "|", "upper", "join(\", \")",
                "for x in vars.q", "endfor", "if ", "endif", "range(99999)", "loop", "~", "*", "'a'", " ", "\n",
            ][..]), 0..24).prop_map(|parts| parts.concat()),
        ],
        vars in usage_object(),
        limit in 0usize..4096,
    ) {
        if check_skeleton("prop", &body).is_ok() {
            if let Ok(compiled) = CompiledPrompt::compile("prop", &body, None) {
                let vars = json!({"q": vars, "name": "x"});
                if let Ok(out) = compiled.render(&json!({}), &vars, limit) {
                    prop_assert!(out.len() <= limit);
                }
            }
        }
    }

    /// Admission against a simple model: whatever the limits and the order and timing of the
    /// calls, the money admitted never passes the dollar limit, a bucket never goes below zero,
    /// and within one instant no more calls are admitted than the RPM limit.
    #[test]
    fn admission_never_admits_beyond_its_limits(
        rpm in 0i32..50, itpm in 0i32..10_000, otpm in 0i32..10_000, dollars in 0i64..100_000,
        calls in prop::collection::vec((0i32..3_000, 0i32..3_000, 0i64..20_000, 0i64..2_000_000, any::<bool>()), 1..80),
    ) {
        let limits = Limits { rpm, itpm, otpm, dollars: Decimal::new(dollars, 4) };
        let mut buckets = Buckets::full(&limits, 0);
        let mut reserved = Decimal::ZERO;
        let mut now = 0i64;
        let mut admitted_at_zero = 0;
        for (input, output, estimate, step, eval_line) in calls {
            now += step;
            let line = if eval_line { BudgetLine::Eval } else { BudgetLine::Tenant };
            let request = Request {
                est_input_tokens: input,
                max_output_tokens: output,
                estimate: Decimal::new(estimate, 4),
                line,
            };
            match admission::admit(&buckets, &limits, Decimal::ZERO, reserved, &request, now, i64::MAX) {
                Ok(next) => {
                    buckets = next;
                    reserved += request.tenant_hold();
                    prop_assert!(reserved <= limits.dollars, "{reserved} > {}", limits.dollars);
                    prop_assert!(buckets.rpm >= 0.0 && buckets.itpm >= 0.0 && buckets.otpm >= 0.0, "{buckets:?}");
                    if now == 0 {
                        admitted_at_zero += 1;
                    }
                }
                Err(refusal) => {
                    prop_assert!(refusal.retry_after_ms.is_none_or(|ms| ms >= 0));
                    if line == BudgetLine::Eval {
                        prop_assert_ne!(refusal.limit, "dollar_budget");
                    }
                }
            }
        }
        prop_assert!(admitted_at_zero <= rpm.max(0), "{admitted_at_zero} calls at t=0 under rpm {rpm}");
    }
}

/// The properties above hold vacuously if their inputs are all refused: the same strategies
/// must reach both the accepting and the refusing paths.
#[test]
fn the_strategies_reach_both_accepted_and_refused_inputs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut draw = |strategy: &dyn Fn(&mut TestRunner) -> bool| {
        let accepted = (0..500).filter(|_| strategy(&mut runner)).count();
        (accepted, 500 - accepted)
    };
    let usage = draw(&|runner| {
        let p = provider().new_tree(runner).unwrap().current();
        let u = any_usage().new_tree(runner).unwrap().current();
        normalize(p, &u).is_ok()
    });
    let rendered = draw(&|runner| {
        let body = prop::collection::vec(
            prop::sample::select(&["{{ ", " }}", "vars.", "q", "name", "x", " ", "|", "upper"][..]),
            0..8,
        )
        .prop_map(|parts| parts.concat())
        .new_tree(runner)
        .unwrap()
        .current();
        check_skeleton("prop", &body).is_ok()
            && CompiledPrompt::compile("prop", &body, None)
                .and_then(|c| c.render(&json!({}), &json!({"q": "a", "name": "x"}), 4096))
                .is_ok()
    });
    eprintln!("accepted/refused of 500: usage objects {usage:?}, templates {rendered:?}");
    assert!(
        usage.0 > 0 && usage.1 > 0,
        "usage objects accepted/refused: {usage:?}"
    );
    assert!(
        rendered.0 > 0 && rendered.1 > 0,
        "templates rendered/refused: {rendered:?}"
    );
}
