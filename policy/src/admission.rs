//! The admission rules of `budget_check` for state kept in memory (`bulkhead.memory_admission`):
//! token buckets that refill continuously and a dollar budget per period. The same rules, in the
//! same order, as the table path in sql/budgets.sql; pure, so both are tested against one list.

use rust_decimal::Decimal;

/// Microseconds, on PostgreSQL's TimestampTz scale.
pub type Micros = i64;

/// A tenant's limits (its own, or the platform default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub rpm: i32,
    pub itpm: i32,
    pub otpm: i32,
    pub dollars: Decimal,
}

/// Bucket levels and the limits they were last computed under.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct Buckets {
    pub rpm: f64,
    pub itpm: f64,
    pub otpm: f64,
    pub rpm_cap: i32,
    pub itpm_cap: i32,
    pub otpm_cap: i32,
    pub refilled_at: Micros,
}

impl Buckets {
    /// Full buckets: a tenant seen for the first time (or after a restart) starts with a burst.
    pub fn full(limits: &Limits, now: Micros) -> Buckets {
        Buckets {
            rpm: f64::from(limits.rpm),
            itpm: f64::from(limits.itpm),
            otpm: f64::from(limits.otpm),
            rpm_cap: limits.rpm,
            itpm_cap: limits.itpm,
            otpm_cap: limits.otpm,
            refilled_at: now,
        }
    }

    /// Levels at `now`: a changed limit moves the level by the change, and each bucket refills at
    /// limit-per-minute up to one minute's worth.
    pub fn refilled(&self, limits: &Limits, now: Micros) -> Buckets {
        let elapsed = (now - self.refilled_at).max(0) as f64 / 1e6;
        let level = |level: f64, cap: i32, limit: i32| {
            let limit = f64::from(limit);
            (level + (limit - f64::from(cap)) + elapsed * limit / 60.0).min(limit)
        };
        Buckets {
            rpm: level(self.rpm, self.rpm_cap, limits.rpm),
            itpm: level(self.itpm, self.itpm_cap, limits.itpm),
            otpm: level(self.otpm, self.otpm_cap, limits.otpm),
            rpm_cap: limits.rpm,
            itpm_cap: limits.itpm,
            otpm_cap: limits.otpm,
            refilled_at: now,
        }
    }

    /// Gives back tokens (a rolled-back admission, or what the provider did not count). Debt
    /// stays: a refund never lifts a level above its cap.
    pub fn refund(&mut self, rpm: f64, itpm: f64, otpm: f64) {
        self.rpm = (self.rpm + rpm).min(f64::from(self.rpm_cap));
        self.itpm = (self.itpm + itpm).min(f64::from(self.itpm_cap));
        self.otpm = (self.otpm + otpm).min(f64::from(self.otpm_cap));
    }
}

/// The budget a call's dollars count against. Rate limits apply to every call alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetLine {
    /// The tenant's own dollar budget.
    Tenant,
    /// The tenant's eval budget (`bulkhead.set_eval_budget`), which sql/evals.sql checks and
    /// holds: the tenant's budget neither admits nor holds the call's dollars.
    Eval,
}

/// One call to admit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub est_input_tokens: i32,
    pub max_output_tokens: i32,
    /// input x input price + max output x output price.
    pub estimate: Decimal,
    pub line: BudgetLine,
}

impl Request {
    /// What the call holds on the tenant's dollar budget until it settles.
    pub fn tenant_hold(&self) -> Decimal {
        match self.line {
            BudgetLine::Tenant => self.estimate,
            BudgetLine::Eval => Decimal::ZERO,
        }
    }
}

/// Why a call is refused: the `code` and `limit` of the PT429 detail. `retry_after_ms` is None
/// when the call can never fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub limit: &'static str,
    pub retry_after_ms: Option<i64>,
}

const RATE: &str = "tenant_rate_limit_exceeded";
const BUDGET: &str = "tenant_budget_exceeded";

/// The worst-case cost of a call in USD, from prices per million tokens.
pub fn estimate(
    est_input_tokens: i32,
    max_output_tokens: i32,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
) -> Decimal {
    ((Decimal::from(est_input_tokens) * input_per_mtok
        + Decimal::from(max_output_tokens) * output_per_mtok)
        / Decimal::from(1_000_000))
    .normalize()
}

/// Admits `request` against refilled `buckets` and the period's money, or says why not.
/// On success returns the levels after taking the call's tokens.
pub fn admit(
    buckets: &Buckets,
    limits: &Limits,
    spent: Decimal,
    reserved: Decimal,
    request: &Request,
    now: Micros,
    period_end: Micros,
) -> Result<Buckets, Refusal> {
    let never = |code, limit| Refusal {
        code,
        limit,
        retry_after_ms: None,
    };
    let later = |code, limit, ms: f64| Refusal {
        code,
        limit,
        retry_after_ms: Some(ms.ceil() as i64),
    };
    let b = buckets.refilled(limits, now);
    // A limit of 0 blocks its dimension, whatever the request asks for.
    if limits.itpm == 0 {
        return Err(never(RATE, "itpm"));
    }
    if limits.otpm == 0 {
        return Err(never(RATE, "otpm"));
    }
    let on_tenant_budget = request.line == BudgetLine::Tenant;
    if on_tenant_budget && limits.dollars.is_zero() {
        return Err(never(BUDGET, "dollar_budget"));
    }
    if limits.rpm < 1 {
        return Err(never(RATE, "rpm"));
    }
    if b.rpm < 1.0 {
        return Err(later(
            RATE,
            "rpm",
            (1.0 - b.rpm) * 60000.0 / f64::from(limits.rpm),
        ));
    }
    let input = f64::from(request.est_input_tokens);
    if request.est_input_tokens > limits.itpm {
        return Err(never(RATE, "itpm"));
    }
    if input > b.itpm {
        return Err(later(
            RATE,
            "itpm",
            (input - b.itpm) * 60000.0 / f64::from(limits.itpm),
        ));
    }
    let output = f64::from(request.max_output_tokens);
    if request.max_output_tokens > limits.otpm {
        return Err(never(RATE, "otpm"));
    }
    if output > b.otpm {
        return Err(later(
            RATE,
            "otpm",
            (output - b.otpm) * 60000.0 / f64::from(limits.otpm),
        ));
    }
    // A call on the eval line: its dollars are the eval budget's (see BudgetLine::Eval).
    if on_tenant_budget {
        if request.estimate > limits.dollars {
            return Err(never(BUDGET, "dollar_budget"));
        }
        if spent + reserved + request.estimate > limits.dollars {
            return Err(later(
                BUDGET,
                "dollar_budget",
                (period_end - now).max(0) as f64 / 1000.0,
            ));
        }
    }
    Ok(Buckets {
        rpm: b.rpm - 1.0,
        itpm: b.itpm - input,
        otpm: b.otpm - output,
        ..b
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn limits(rpm: i32, itpm: i32, otpm: i32, dollars: &str) -> Limits {
        Limits {
            rpm,
            itpm,
            otpm,
            dollars: Decimal::from_str(dollars).unwrap(),
        }
    }

    fn request(input: i32, output: i32, estimate: &str) -> Request {
        Request {
            est_input_tokens: input,
            max_output_tokens: output,
            estimate: Decimal::from_str(estimate).unwrap(),
            line: BudgetLine::Tenant,
        }
    }

    const MINUTE: Micros = 60_000_000;

    #[test]
    fn estimate_is_exact() {
        let e = estimate(
            100,
            100,
            Decimal::from_str("0.15").unwrap(),
            Decimal::from_str("0.6").unwrap(),
        );
        assert_eq!(e.to_string(), "0.000075");
    }

    #[test]
    fn the_last_unit_is_admitted_once() {
        let l = limits(1000, 100_000, 100_000, "0.1");
        let b = Buckets::full(&l, 0);
        let r = request(10, 10, "0.0002");
        let spent = Decimal::from_str("0.0998").unwrap();
        assert!(admit(&b, &l, spent, Decimal::ZERO, &r, 0, MINUTE).is_ok());
        let refused = admit(&b, &l, spent, r.estimate, &r, 0, MINUTE).unwrap_err();
        assert_eq!(refused.code, BUDGET);
        assert_eq!(refused.retry_after_ms, Some(60_000));
    }

    #[test]
    fn the_eval_line_skips_the_tenants_dollars_but_not_its_rates() {
        let b = Buckets::full(&limits(1, 100, 100, "1"), 0);
        let eval = Request {
            line: BudgetLine::Eval,
            ..request(10, 10, "5")
        };
        assert_eq!(eval.tenant_hold(), Decimal::ZERO);
        for dollars in ["0", "1"] {
            let l = limits(1, 100, 100, dollars);
            let spent = Decimal::from_str("7").unwrap();
            let after = admit(&b, &l, spent, Decimal::ONE, &eval, 0, MINUTE).unwrap();
            assert_eq!(
                admit(&after, &l, Decimal::ZERO, Decimal::ZERO, &eval, 0, MINUTE)
                    .unwrap_err()
                    .limit,
                "rpm"
            );
            assert_eq!(
                admit(
                    &b,
                    &l,
                    spent,
                    Decimal::ONE,
                    &request(10, 10, "5"),
                    0,
                    MINUTE
                )
                .unwrap_err()
                .limit,
                "dollar_budget"
            );
        }
        let too_big = Request {
            line: BudgetLine::Eval,
            ..request(101, 1, "0")
        };
        let l = limits(1, 100, 100, "1");
        assert_eq!(
            admit(&b, &l, Decimal::ZERO, Decimal::ZERO, &too_big, 0, MINUTE)
                .unwrap_err()
                .limit,
            "itpm"
        );
    }

    #[test]
    fn rpm_refills_continuously_and_says_when() {
        let l = limits(60, 100_000, 100_000, "10");
        let mut b = Buckets::full(&l, 0);
        let r = request(1, 1, "0.000001");
        for _ in 0..60 {
            b = admit(&b, &l, Decimal::ZERO, Decimal::ZERO, &r, 0, MINUTE).unwrap();
        }
        let refused = admit(&b, &l, Decimal::ZERO, Decimal::ZERO, &r, 0, MINUTE).unwrap_err();
        assert_eq!((refused.limit, refused.retry_after_ms), ("rpm", Some(1000)));
        assert!(admit(&b, &l, Decimal::ZERO, Decimal::ZERO, &r, 1_000_000, MINUTE).is_ok());
    }

    #[test]
    fn a_raised_limit_raises_the_level() {
        let small = limits(3, 100_000, 100_000, "10");
        let mut b = Buckets::full(&small, 0);
        let r = request(1, 1, "0.000001");
        for _ in 0..3 {
            b = admit(&b, &small, Decimal::ZERO, Decimal::ZERO, &r, 0, MINUTE).unwrap();
        }
        let big = limits(1000, 100_000, 100_000, "10");
        assert!(admit(&b, &big, Decimal::ZERO, Decimal::ZERO, &r, 0, MINUTE).is_ok());
    }

    #[test]
    fn requests_that_can_never_fit_have_no_retry() {
        let l = limits(10, 100, 100, "1");
        let b = Buckets::full(&l, 0);
        for (r, limit) in [
            (request(101, 1, "0"), "itpm"),
            (request(1, 101, "0"), "otpm"),
            (request(1, 1, "1.01"), "dollar_budget"),
        ] {
            let refused = admit(&b, &l, Decimal::ZERO, Decimal::ZERO, &r, 0, MINUTE).unwrap_err();
            assert_eq!((refused.limit, refused.retry_after_ms), (limit, None));
        }
        let blocked = limits(0, 100, 100, "1");
        let refused = admit(
            &Buckets::full(&blocked, 0),
            &blocked,
            Decimal::ZERO,
            Decimal::ZERO,
            &request(1, 1, "0"),
            0,
            MINUTE,
        )
        .unwrap_err();
        assert_eq!((refused.limit, refused.retry_after_ms), ("rpm", None));
    }

    #[test]
    fn refunds_never_pass_the_cap() {
        let l = limits(10, 100, 100, "1");
        let mut b = Buckets::full(&l, 0);
        b.itpm -= 50.0;
        b.refund(5.0, 80.0, 0.0);
        assert_eq!((b.rpm, b.itpm), (10.0, 100.0));
    }
}
