//! Prompt templates: what a skeleton or a tenant's version may contain, checked when it is
//! published, and sandboxed rendering with minijinja.
//!
//! Tenants write template source, so the language is a subset of Jinja in which a template's
//! cost is bounded by its own size, its inputs and its fuel:
//! - no arithmetic and no `~`: `"x" * 99999999` or a string doubled in a loop could exhaust
//!   memory, and a failed allocation would abort the backend;
//! - no function or method calls, macros, `call`, `include`, `import`, capturing `set` or
//!   `filter` blocks: no recursion, no captured output;
//! - list and map literals of constants only: `[a, a]` reassigned in a loop would nest or double
//!   a value without bound (and freeing a deeply nested value overflows the stack);
//! - filters from an allow-list whose result is at most a constant factor of their input, and a
//!   `join` that refuses results over [`MAX_VALUE_BYTES`]. Every filter call is charged to a
//!   per-render work budget by the size of its input, and checks for query cancellation;
//! - a tenant body may only `{% extends %}` its own skeleton, as its first statement.
//!
//! Variables are `slots.<name>` (the version's slot values; a skeleton declares a slot by using
//! it) and `vars.<name>` (the request's variables). Values are data: a slot holding `{{ ... }}`
//! renders as that text. Rendering is strict: an undefined variable is an error, not "".

use crate::sqlstate::{HasSqlState, SqlState};
use minijinja::machinery::{self, ast};
use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, State, UndefinedBehavior};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::io;

/// Largest skeleton or tenant body, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Largest slot object (as JSON text), in bytes.
pub const MAX_SLOTS_BYTES: usize = 64 * 1024;
/// Largest request variables object (as JSON text), in bytes.
pub const MAX_VARS_BYTES: usize = 256 * 1024;
/// Largest string a `join` may build.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// Instructions one render may execute.
pub const FUEL: u64 = 50_000;
/// Work one render may do in filters and output: bytes of string input, items of sequences.
pub const WORK: u64 = 2_000_000;
/// Nesting of blocks and loops one render may reach.
pub const RECURSION_LIMIT: usize = 64;
/// Longest template name.
pub const MAX_NAME_CHARS: usize = 100;

const ALLOWED_TESTS: &[&str] = &[
    "boolean",
    "defined",
    "divisibleby",
    "endingwith",
    "eq",
    "even",
    "false",
    "float",
    "ge",
    "gt",
    "in",
    "integer",
    "iterable",
    "le",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "sequence",
    "startingwith",
    "string",
    "true",
    "undefined",
    "upper",
];

/// Why a template was refused or a render failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PromptError {
    #[error("invalid template name {0:?}")]
    BadName(String),
    #[error("template syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{construct} is not allowed in prompt templates (line {line}, column {column})")]
    Disallowed {
        construct: String,
        line: usize,
        column: usize,
    },
    #[error("unknown variable \"{0}\"")]
    UnknownVariable(String),
    #[error("unknown slot \"{0}\"")]
    UnknownSlot(String),
    #[error("a tenant body must start with {{% extends \"{0}\" %}}")]
    MustExtend(String),
    #[error("{what} must be a JSON object")]
    NotAnObject { what: &'static str },
    #[error("{what} is not JSON this renderer accepts: {reason}")]
    BadJson { what: &'static str, reason: String },
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("rendered prompt is larger than {limit} bytes")]
    OutputTooLarge { limit: usize },
    #[error("template ran out of fuel")]
    OutOfFuel,
    #[error("template nesting is too deep")]
    TooDeep,
    #[error("undefined value in template{0}")]
    Undefined(String),
    #[error("rendered prompt contains a NUL character")]
    NulInOutput,
    #[error("template failed: {0}")]
    Render(String),
}

impl HasSqlState for PromptError {
    fn sqlstate(&self) -> SqlState {
        match self {
            PromptError::Syntax { .. } => SqlState::SYNTAX_ERROR,
            PromptError::Disallowed { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            PromptError::TooLarge { .. } | PromptError::OutputTooLarge { .. } => {
                SqlState::PROGRAM_LIMIT_EXCEEDED
            }
            PromptError::OutOfFuel | PromptError::TooDeep => SqlState::STATEMENT_TOO_COMPLEX,
            PromptError::NulInOutput => SqlState::UNTRANSLATABLE_CHARACTER,
            _ => SqlState::INVALID_PARAMETER_VALUE,
        }
    }

    fn detail(&self) -> Option<String> {
        Some(match self {
            PromptError::BadName(_) => format!(
                "A template name is 1 to {MAX_NAME_CHARS} characters: lowercase letters, digits, '_', '-' and '.'."
            ),
            PromptError::Disallowed { .. } => "Prompt templates may use variables, if, for, set, with, blocks, \
                 comparisons, tests and the filters abs, capitalize, count, default, dictsort, first, \
                 float, int, items, join, last, length, lower, reverse, round, sort, title, trim, \
                 unique and upper: no arithmetic, ~, calls, macros, includes or imports."
                .to_string(),
            PromptError::UnknownVariable(_) => "Templates read slots.<name> and vars.<name> only.".to_string(),
            PromptError::BadJson { .. } => "Values may nest at most 128 levels deep.".to_string(),
            PromptError::UnknownSlot(_) => {
                "A slot exists when the template's skeleton uses it as slots.<name>.".to_string()
            }
            PromptError::MustExtend(_) => {
                "A tenant body overrides the blocks of its own skeleton.".to_string()
            }
            PromptError::Undefined(_) => {
                "Rendering is strict: pass every variable the template reads in vars.".to_string()
            }
            PromptError::OutputTooLarge { .. } => {
                "The limit is the setting bulkhead.prompt_output_limit.".to_string()
            }
            PromptError::OutOfFuel => format!(
                "A render may execute {FUEL} template instructions and {WORK} units of filter work \
                 (bytes or items of filter input); this one did not finish within them."
            ),
            PromptError::NulInOutput => "PostgreSQL text cannot hold U+0000.".to_string(),
            _ => return None,
        })
    }
}

/// What a skeleton declares: the slots it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skeleton {
    pub slots: BTreeSet<String>,
}

/// Parses slots or request variables given as JSON text: size first, then depth (serde_json
/// stops at 128 levels), then shape.
pub fn parse_object(
    what: &'static str,
    text: &str,
    limit: usize,
) -> Result<serde_json::Value, PromptError> {
    check_size(what, text.len(), limit)?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| PromptError::BadJson {
            what,
            reason: err.to_string(),
        })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(PromptError::NotAnObject { what })
    }
}

/// Checks a template name.
pub fn check_name(name: &str) -> Result<(), PromptError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PromptError::BadName(name.to_string()))
    }
}

/// Validates a skeleton and returns the slots it declares.
pub fn check_skeleton(name: &str, body: &str) -> Result<Skeleton, PromptError> {
    check_name(name)?;
    check_size("skeleton body", body.len(), MAX_TEMPLATE_BYTES)?;
    let tree = parse(name, body)?;
    check_allowed(&tree, None)?;
    let slots = variables(name, body)?;
    Ok(Skeleton { slots })
}

/// Validates a tenant's version: its slot values and its optional body against the skeleton.
pub fn check_version(
    name: &str,
    skeleton: &Skeleton,
    slots: &serde_json::Value,
    body: Option<&str>,
) -> Result<(), PromptError> {
    check_name(name)?;
    let object = slots
        .as_object()
        .ok_or(PromptError::NotAnObject { what: "slots" })?;
    check_size("slots", slots.to_string().len(), MAX_SLOTS_BYTES)?;
    if let Some(unknown) = object.keys().find(|k| !skeleton.slots.contains(*k)) {
        return Err(PromptError::UnknownSlot(unknown.clone()));
    }
    if let Some(body) = body {
        check_size("tenant body", body.len(), MAX_TEMPLATE_BYTES)?;
        let entry = tenant_entry(name);
        let tree = parse(&entry, body)?;
        check_allowed(&tree, Some(name))?;
        if let Some(unknown) = variables(&entry, body)?
            .into_iter()
            .find(|slot| !skeleton.slots.contains(slot))
        {
            return Err(PromptError::UnknownSlot(unknown));
        }
    }
    Ok(())
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), PromptError> {
    if size > limit {
        Err(PromptError::TooLarge { what, size, limit })
    } else {
        Ok(())
    }
}

fn tenant_entry(name: &str) -> String {
    format!("{name}@tenant")
}

fn parse<'s>(name: &'s str, source: &'s str) -> Result<ast::Stmt<'s>, PromptError> {
    machinery::parse(source, name, Default::default(), Default::default()).map_err(|err| {
        let (line, column) = line_and_column(source, &err);
        PromptError::Syntax {
            line,
            column,
            message: err.detail().unwrap_or("invalid syntax").to_string(),
        }
    })
}

fn line_and_column(source: &str, err: &minijinja::Error) -> (usize, usize) {
    let offset = err.range().map(|r| r.start).unwrap_or(0).min(source.len());
    let before = &source[..offset];
    let line = err
        .line()
        .unwrap_or_else(|| before.matches('\n').count() + 1);
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The slot names a template reads; any other free variable is refused.
fn variables(name: &str, source: &str) -> Result<BTreeSet<String>, PromptError> {
    let mut env = Environment::empty();
    env.add_template(name, source)
        .map_err(|err| PromptError::Syntax {
            line: err.line().unwrap_or(1),
            column: 1,
            message: err.detail().unwrap_or("invalid syntax").to_string(),
        })?;
    let template = env
        .get_template(name)
        .map_err(|err| PromptError::Render(err.to_string()))?;
    let mut slots = BTreeSet::new();
    for path in template.undeclared_variables(true) {
        let mut parts = path.splitn(3, '.');
        match (parts.next(), parts.next()) {
            (Some("slots"), Some(slot)) => {
                slots.insert(slot.to_string());
            }
            (Some("vars"), Some(_)) | (Some("loop"), _) => {}
            (Some("slots" | "vars"), None) => {
                return Err(PromptError::UnknownVariable(format!(
                    "{path} (read slots.<name> and vars.<name> by name)"
                )))
            }
            _ => return Err(PromptError::UnknownVariable(path)),
        }
    }
    Ok(slots)
}

fn disallowed(construct: impl Into<String>, span: machinery::Span) -> PromptError {
    PromptError::Disallowed {
        construct: construct.into(),
        line: usize::from(span.start_line),
        column: usize::from(span.start_col) + 1,
    }
}

/// Walks the tree and refuses every construct outside the subset. `extends` names the only
/// template a tenant body may extend (None: a skeleton, which extends nothing).
fn check_allowed(tree: &ast::Stmt<'_>, extends: Option<&str>) -> Result<(), PromptError> {
    let ast::Stmt::Template(template) = tree else {
        return Err(disallowed(
            "a template that is not a document",
            machinery::Span::default(),
        ));
    };
    let mut children = template.children.iter().peekable();
    // A body's first statement (after whitespace) is its extends.
    while let Some(ast::Stmt::EmitRaw(raw)) = children.peek() {
        if !raw.raw.trim().is_empty() {
            break;
        }
        children.next();
    }
    if let Some(own) = extends {
        match children.next() {
            Some(ast::Stmt::Extends(ext)) if const_str(&ext.name) == Some(own) => {}
            _ => return Err(PromptError::MustExtend(own.to_string())),
        }
    }
    children.try_for_each(check_stmt)
}

fn const_str<'a>(expr: &'a ast::Expr<'_>) -> Option<&'a str> {
    match expr {
        ast::Expr::Const(c) => c.value.as_str(),
        _ => None,
    }
}

fn check_stmt(stmt: &ast::Stmt<'_>) -> Result<(), PromptError> {
    use ast::Stmt;
    match stmt {
        Stmt::Template(t) => t.children.iter().try_for_each(check_stmt),
        Stmt::EmitExpr(e) => check_expr(&e.expr),
        Stmt::EmitRaw(_) => Ok(()),
        Stmt::ForLoop(f) => {
            if f.recursive {
                return Err(disallowed("a recursive for loop", f.span()));
            }
            check_expr(&f.target)?;
            check_expr(&f.iter)?;
            f.filter_expr.iter().try_for_each(check_expr)?;
            f.body.iter().chain(&f.else_body).try_for_each(check_stmt)
        }
        Stmt::IfCond(i) => {
            check_expr(&i.expr)?;
            i.true_body
                .iter()
                .chain(&i.false_body)
                .try_for_each(check_stmt)
        }
        Stmt::WithBlock(w) => {
            for (target, value) in &w.assignments {
                check_expr(target)?;
                check_expr(value)?;
            }
            w.body.iter().try_for_each(check_stmt)
        }
        Stmt::Set(s) => {
            check_expr(&s.target)?;
            check_expr(&s.expr)
        }
        Stmt::Block(b) => b.body.iter().try_for_each(check_stmt),
        Stmt::SetBlock(s) => Err(disallowed("a capturing set block", s.span())),
        Stmt::AutoEscape(a) => Err(disallowed("autoescape", a.span())),
        Stmt::FilterBlock(f) => Err(disallowed("a filter block", f.span())),
        Stmt::Import(i) => Err(disallowed("import", i.span())),
        Stmt::FromImport(i) => Err(disallowed("from ... import", i.span())),
        Stmt::Extends(e) => Err(disallowed(
            "extends (other than a body's first statement)",
            e.span(),
        )),
        Stmt::Include(i) => Err(disallowed("include", i.span())),
        Stmt::Macro(m) => Err(disallowed("macro", m.span())),
        Stmt::CallBlock(c) => Err(disallowed("call", c.span())),
        #[allow(unreachable_patterns)]
        other => Err(disallowed("this statement", stmt_span(other))),
    }
}

fn stmt_span(stmt: &ast::Stmt<'_>) -> machinery::Span {
    match stmt {
        ast::Stmt::Template(s) => s.span(),
        ast::Stmt::EmitExpr(s) => s.span(),
        ast::Stmt::EmitRaw(s) => s.span(),
        _ => machinery::Span::default(),
    }
}

fn check_args(args: &[ast::CallArg<'_>]) -> Result<(), PromptError> {
    args.iter().try_for_each(|arg| match arg {
        ast::CallArg::Pos(e)
        | ast::CallArg::Kwarg(_, e)
        | ast::CallArg::PosSplat(e)
        | ast::CallArg::KwargSplat(e) => check_expr(e),
    })
}

fn check_expr(expr: &ast::Expr<'_>) -> Result<(), PromptError> {
    use ast::{BinOpKind, Expr};
    match expr {
        Expr::Var(_) | Expr::Const(_) => Ok(()),
        Expr::Slice(s) => {
            check_expr(&s.expr)?;
            if s.step.as_ref().is_some_and(|step| !is_constant(step)) {
                return Err(disallowed("a slice step that is not a constant", s.span()));
            }
            [&s.start, &s.stop]
                .into_iter()
                .flatten()
                .try_for_each(check_expr)
        }
        Expr::UnaryOp(u) => check_expr(&u.expr),
        Expr::BinOp(b) => match b.op {
            BinOpKind::Eq
            | BinOpKind::Ne
            | BinOpKind::Lt
            | BinOpKind::Lte
            | BinOpKind::Gt
            | BinOpKind::Gte
            | BinOpKind::ScAnd
            | BinOpKind::ScOr
            | BinOpKind::In => {
                check_expr(&b.left)?;
                check_expr(&b.right)
            }
            BinOpKind::Concat => Err(disallowed("the ~ operator", b.span())),
            _ => Err(disallowed("arithmetic", b.span())),
        },
        Expr::Compare(c) => {
            check_expr(&c.expr)?;
            c.ops.iter().try_for_each(|op| check_expr(&op.expr))
        }
        Expr::IfExpr(i) => {
            check_expr(&i.test_expr)?;
            check_expr(&i.true_expr)?;
            i.false_expr.iter().try_for_each(check_expr)
        }
        Expr::Filter(f) => {
            if !BUILTIN_FILTERS.iter().any(|(name, _)| *name == f.name) {
                return Err(disallowed(format!("the filter {:?}", f.name), f.span()));
            }
            f.expr.iter().try_for_each(check_expr)?;
            check_args(&f.args)
        }
        Expr::Test(t) => {
            if !ALLOWED_TESTS.contains(&t.name) {
                return Err(disallowed(format!("the test {:?}", t.name), t.span()));
            }
            check_expr(&t.expr)?;
            check_args(&t.args)
        }
        Expr::GetAttr(g) => check_expr(&g.expr),
        Expr::GetItem(g) => {
            check_expr(&g.expr)?;
            check_expr(&g.subscript_expr)
        }
        Expr::Call(c) => Err(disallowed("a function or method call", c.span())),
        Expr::List(l) if l.items.iter().all(is_constant) => Ok(()),
        Expr::Map(m) if m.keys.iter().chain(&m.values).all(is_constant) => Ok(()),
        Expr::List(l) => Err(disallowed("a list literal holding variables", l.span())),
        Expr::Map(m) => Err(disallowed("a map literal holding variables", m.span())),
    }
}

/// A literal whose size the template text itself bounds.
fn is_constant(expr: &ast::Expr<'_>) -> bool {
    match expr {
        ast::Expr::Const(_) => true,
        ast::Expr::List(l) => l.items.iter().all(is_constant),
        ast::Expr::Map(m) => m.keys.iter().chain(&m.values).all(is_constant),
        ast::Expr::UnaryOp(u) => is_constant(&u.expr),
        _ => false,
    }
}

/// A version compiled for rendering: its skeleton and optional body in an environment of their
/// own, with no loader, strict undefined, fuel and the allowed filters and tests only.
pub struct CompiledPrompt {
    env: Environment<'static>,
    entry: String,
}

impl CompiledPrompt {
    /// Compiles a published version. The sources were validated when they were published.
    pub fn compile(name: &str, skeleton: &str, body: Option<&str>) -> Result<Self, PromptError> {
        let mut env = Environment::empty();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        register_filters_and_tests(&mut env);
        let syntax = |err: minijinja::Error| PromptError::Syntax {
            line: err.line().unwrap_or(1),
            column: 1,
            message: err.detail().unwrap_or("invalid syntax").to_string(),
        };
        env.add_template_owned(name.to_string(), skeleton.to_string())
            .map_err(syntax)?;
        let entry = match body {
            Some(body) => {
                let entry = tenant_entry(name);
                env.add_template_owned(entry.clone(), body.to_string())
                    .map_err(syntax)?;
                entry
            }
            None => name.to_string(),
        };
        Ok(CompiledPrompt { env, entry })
    }

    /// Renders with the version's slot values and the request's variables, refusing output
    /// over `output_limit` bytes.
    pub fn render(
        &self,
        slots: &serde_json::Value,
        vars: &serde_json::Value,
        output_limit: usize,
    ) -> Result<String, PromptError> {
        // Size and depth were checked when the vars were parsed (parse_object).
        if !vars.is_object() {
            return Err(PromptError::NotAnObject { what: "vars" });
        }
        let template = self
            .env
            .get_template(&self.entry)
            .map_err(|err| PromptError::Render(err.to_string()))?;
        let context = minijinja::context! {
            slots => Value::from_serialize(slots),
            vars => Value::from_serialize(vars),
        };
        let mut out = CappedWriter {
            buf: Vec::new(),
            limit: output_limit,
            overflowed: false,
        };
        WORK_DONE.set(0);
        let rendered = template.render_captured_to(context, &mut out);
        let out_of_work = WORK_DONE.get() > WORK;
        match rendered {
            Ok(_) => {
                let text = String::from_utf8(out.buf)
                    .map_err(|err| PromptError::Render(err.to_string()))?;
                if text.contains('\0') {
                    return Err(PromptError::NulInOutput);
                }
                Ok(text)
            }
            Err(_) if out.overflowed => Err(PromptError::OutputTooLarge {
                limit: output_limit,
            }),
            Err(_) if out_of_work => Err(PromptError::OutOfFuel),
            Err(err) => Err(render_error(&err)),
        }
    }
}

fn render_error(err: &minijinja::Error) -> PromptError {
    let detail = err.detail().unwrap_or("").to_string();
    let at = err
        .line()
        .map(|line| format!(" (line {line})"))
        .unwrap_or_default();
    match err.kind() {
        ErrorKind::OutOfFuel => PromptError::OutOfFuel,
        ErrorKind::InvalidOperation if detail.contains("recursion limit") => PromptError::TooDeep,
        ErrorKind::UndefinedError => PromptError::Undefined(at),
        _ => PromptError::Render(format!("{err}{at}")),
    }
}

/// Collects output, failing the render once it passes the limit.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        check_interrupts();
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("prompt output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// Filter work done by the render running on this thread (reset at each render).
    static WORK_DONE: Cell<u64> = const { Cell::new(0) };
    /// Called between units of work: the extension raises a pending query cancel here.
    static INTERRUPT_CHECK: Cell<fn()> = const { Cell::new(no_interrupt_check) };
}

fn no_interrupt_check() {}

/// Installs the function a render calls between units of work to honour cancellation and
/// statement_timeout (it may unwind; nothing a render holds needs cleaning up).
pub fn set_interrupt_check(check: fn()) {
    INTERRUPT_CHECK.set(check);
}

fn check_interrupts() {
    INTERRUPT_CHECK.get()();
}

/// Charges a filter call's input to the render's work budget.
fn charge(args: &[Value]) -> Result<(), minijinja::Error> {
    check_interrupts();
    let weight: u64 = args
        .iter()
        .map(|value| {
            let size = value
                .as_str()
                .map(str::len)
                .or_else(|| value.len())
                .unwrap_or(1);
            u64::try_from(size).unwrap_or(u64::MAX)
        })
        .fold(1, u64::saturating_add);
    let done = WORK_DONE.get().saturating_add(weight);
    WORK_DONE.set(done);
    if done > WORK {
        Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "template work limit reached",
        ))
    } else {
        Ok(())
    }
}

/// The allowed filters, each charged to the work budget, then run by minijinja's own filter
/// under a name no template can write (the publish checks allow only the names below).
const BUILTIN_FILTERS: &[(&str, &str)] = &[
    ("abs", "__builtin_abs"),
    ("capitalize", "__builtin_capitalize"),
    ("count", "__builtin_length"),
    ("d", "__builtin_default"),
    ("default", "__builtin_default"),
    ("dictsort", "__builtin_dictsort"),
    ("first", "__builtin_first"),
    ("float", "__builtin_float"),
    ("int", "__builtin_int"),
    ("items", "__builtin_items"),
    ("join", "__builtin_join"),
    ("last", "__builtin_last"),
    ("length", "__builtin_length"),
    ("lower", "__builtin_lower"),
    ("reverse", "__builtin_reverse"),
    ("round", "__builtin_round"),
    ("sort", "__builtin_sort"),
    ("title", "__builtin_title"),
    ("trim", "__builtin_trim"),
    ("unique", "__builtin_unique"),
    ("upper", "__builtin_upper"),
];

fn register_filters_and_tests(env: &mut Environment<'static>) {
    use minijinja::value::Rest;
    use minijinja::{filters as f, tests as t};
    env.add_filter("__builtin_abs", f::abs);
    env.add_filter("__builtin_capitalize", f::capitalize);
    env.add_filter("__builtin_default", f::default);
    env.add_filter("__builtin_dictsort", f::dictsort);
    env.add_filter("__builtin_first", f::first);
    env.add_filter("__builtin_float", f::float);
    env.add_filter("__builtin_int", f::int);
    env.add_filter("__builtin_items", f::items);
    env.add_filter("__builtin_join", bounded_join);
    env.add_filter("__builtin_last", f::last);
    env.add_filter("__builtin_length", f::length);
    env.add_filter("__builtin_lower", f::lower);
    env.add_filter("__builtin_reverse", f::reverse);
    env.add_filter("__builtin_round", f::round);
    env.add_filter("__builtin_sort", f::sort);
    env.add_filter("__builtin_title", f::title);
    env.add_filter("__builtin_trim", f::trim);
    env.add_filter("__builtin_unique", f::unique);
    env.add_filter("__builtin_upper", f::upper);
    for (name, builtin) in BUILTIN_FILTERS {
        env.add_filter(*name, move |state: &State, Rest(args): Rest<Value>| {
            charge(&args)?;
            state.apply_filter(builtin, &args)
        });
    }

    env.add_test("boolean", t::is_boolean);
    env.add_test("defined", t::is_defined);
    env.add_test("divisibleby", divisible_by);
    env.add_test("endingwith", t::is_endingwith);
    env.add_test("eq", t::is_eq);
    env.add_test("even", t::is_even);
    env.add_test("false", t::is_false);
    env.add_test("float", t::is_float);
    env.add_test("ge", t::is_ge);
    env.add_test("gt", t::is_gt);
    env.add_test("in", t::is_in);
    env.add_test("integer", t::is_integer);
    env.add_test("iterable", t::is_iterable);
    env.add_test("le", t::is_le);
    env.add_test("lower", t::is_lower);
    env.add_test("lt", t::is_lt);
    env.add_test("mapping", t::is_mapping);
    env.add_test("ne", t::is_ne);
    env.add_test("none", t::is_none);
    env.add_test("number", t::is_number);
    env.add_test("odd", t::is_odd);
    env.add_test("sequence", t::is_sequence);
    env.add_test("startingwith", t::is_startingwith);
    env.add_test("string", t::is_string);
    env.add_test("true", t::is_true);
    env.add_test("undefined", t::is_undefined);
    env.add_test("upper", t::is_upper);
}

/// `divisibleby`, refusing a zero divisor (minijinja's own would panic on integer `% 0`).
fn divisible_by(value: &Value, divisor: &Value) -> Result<bool, minijinja::Error> {
    if f64::try_from(divisor.clone()).is_ok_and(|d| d == 0.0) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "divisibleby(0)",
        ));
    }
    Ok(minijinja::tests::is_divisibleby(value, divisor))
}

/// `join`, refusing to build a string over MAX_VALUE_BYTES (n items times a long separator).
fn bounded_join(
    _state: &State,
    value: &Value,
    joiner: Option<&str>,
) -> Result<String, minijinja::Error> {
    let joiner = joiner.unwrap_or("");
    let too_large = || {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("joined string is larger than {MAX_VALUE_BYTES} bytes"),
        )
    };
    let mut out = String::new();
    if let Some(s) = value.as_str() {
        for (i, ch) in s.chars().enumerate() {
            if i > 0 {
                out.push_str(joiner);
            }
            out.push(ch);
            if out.len() > MAX_VALUE_BYTES {
                return Err(too_large());
            }
        }
        return Ok(out);
    }
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(joiner);
        }
        match item.as_str() {
            Some(s) => out.push_str(s),
            None => out.push_str(&item.to_string()),
        }
        if out.len() > MAX_VALUE_BYTES {
            return Err(too_large());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUPPORT: &str = "\
You are {{ slots.display_name }}'s support assistant.
{% block tone %}Tone: {{ slots.persona_tone | default('friendly') }}.{% endblock %}
{% if slots.banned_topics %}Never discuss: {{ slots.banned_topics | join(', ') }}.
{% endif %}{% block instructions %}{{ slots.custom_instructions }}{% endblock %}
Question: {{ vars.question }}";

    fn render(
        body: Option<&str>,
        slots: serde_json::Value,
        vars: serde_json::Value,
    ) -> Result<String, PromptError> {
        let skeleton = check_skeleton("support", SUPPORT).unwrap();
        check_version("support", &skeleton, &slots, body)?;
        CompiledPrompt::compile("support", SUPPORT, body)?.render(&slots, &vars, 256 * 1024)
    }

    #[test]
    fn a_skeleton_declares_the_slots_it_reads() {
        let skeleton = check_skeleton("support", SUPPORT).unwrap();
        let slots: Vec<_> = skeleton.slots.iter().map(String::as_str).collect();
        assert_eq!(
            slots,
            [
                "banned_topics",
                "custom_instructions",
                "display_name",
                "persona_tone"
            ]
        );
    }

    #[test]
    fn tenants_render_their_own_slots() {
        let acme = render(
            None,
            json!({"display_name": "Acme", "persona_tone": "formal", "banned_topics": ["pricing", "competitors"],
                   "custom_instructions": "Cite the manual."}),
            json!({"question": "How do I reset my password?"}),
        )
        .unwrap();
        let globex = render(
            Some("{% extends \"support\" %}{% block tone %}Tone: playful, with emoji.{% endblock %}"),
            json!({"display_name": "Globex", "banned_topics": [], "custom_instructions": "Keep it short."}),
            json!({"question": "Where is my order?"}),
        )
        .unwrap();
        insta::assert_snapshot!("acme", acme);
        insta::assert_snapshot!("globex_with_body", globex);
    }

    #[test]
    fn slot_values_are_data_not_template_source() {
        let out = render(
            None,
            json!({"display_name": "{{ vars.secret }}{% for x in slots %}", "persona_tone": "{% include 'x' %}",
                   "banned_topics": [], "custom_instructions": "{{ 7 * 7 }}"}),
            json!({"question": "{{ slots }}", "secret": "s3cr3t"}),
        )
        .unwrap();
        assert!(
            out.contains("{{ vars.secret }}{% for x in slots %}'s support"),
            "{out}"
        );
        assert!(
            out.contains("{{ 7 * 7 }}") && !out.contains("49") && !out.contains("s3cr3t"),
            "{out}"
        );
        insta::assert_snapshot!("template_syntax_in_slots", out);
    }

    #[test]
    fn parse_errors_give_line_and_column() {
        let err = check_skeleton("bad", "line one\n{% if slots.x %}\nunclosed").unwrap_err();
        assert!(
            matches!(
                err,
                PromptError::Syntax {
                    line: 2,
                    column: 17,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.sqlstate(), SqlState::SYNTAX_ERROR);
        let err = check_skeleton("bad", "ok {{ slots.x ) }}").unwrap_err();
        assert!(
            matches!(err, PromptError::Syntax { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn amplifiers_and_recursion_are_refused_at_publish() {
        for (source, construct) in [
            ("{{ \"x\" * 99999999 }}", "arithmetic"),
            (
                "{% set a = 'xx' %}{% for i in slots.n %}{% set a = a ~ a %}{% endfor %}",
                "~",
            ),
            ("{{ 1 + 1 }}", "arithmetic"),
            (
                "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
                "macro",
            ),
            ("{% include 'support' %}", "include"),
            ("{% import 'support' as s %}", "import"),
            ("{{ range(10) }}", "call"),
            ("{{ slots.x.upper() }}", "call"),
            (
                "{% for x in slots.tree recursive %}{{ loop(x) }}{% endfor %}",
                "recursive",
            ),
            ("{% set big %}{{ slots.x }}{% endset %}", "capturing set"),
            ("{% filter upper %}x{% endfilter %}", "filter block"),
            ("{{ slots.x | replace('a', slots.y) }}", "replace"),
            ("{{ slots.x | tojson }}", "tojson"),
            ("{{ slots.x is sameas slots.y }}", "sameas"),
        ] {
            let err = check_skeleton("attack", source).unwrap_err();
            assert_eq!(
                err.sqlstate(),
                SqlState::FEATURE_NOT_SUPPORTED,
                "{source}: {err:?}"
            );
            assert!(err.to_string().contains(construct), "{source}: {err}");
        }
    }

    #[test]
    fn variables_are_slots_or_vars_only() {
        let err = check_skeleton("s", "{{ other_tenant.slots }}").unwrap_err();
        assert_eq!(
            err,
            PromptError::UnknownVariable("other_tenant.slots".into())
        );
        let err = check_skeleton("s", "{% for k in slots %}{{ k }}{% endfor %}").unwrap_err();
        assert!(matches!(err, PromptError::UnknownVariable(_)), "{err:?}");
        assert!(check_skeleton(
            "s",
            "{% for t in slots.topics %}{{ loop.index }}{{ t }}{% endfor %}"
        )
        .is_ok());
    }

    #[test]
    fn a_version_names_only_declared_slots_and_extends_its_own_skeleton() {
        let skeleton = check_skeleton("support", SUPPORT).unwrap();
        let err = check_version("support", &skeleton, &json!({"dispaly_name": "typo"}), None)
            .unwrap_err();
        assert_eq!(err, PromptError::UnknownSlot("dispaly_name".into()));
        let err = check_version("support", &skeleton, &json!([1]), None).unwrap_err();
        assert_eq!(err, PromptError::NotAnObject { what: "slots" });
        for body in [
            "Just text {{ slots.display_name }}",
            "{% extends \"other\" %}",
            "{% extends slots.display_name %}",
        ] {
            let err = check_version("support", &skeleton, &json!({}), Some(body)).unwrap_err();
            assert_eq!(err, PromptError::MustExtend("support".into()), "{body}");
        }
        let err = check_version(
            "support",
            &skeleton,
            &json!({}),
            Some("{% extends \"support\" %}{% block tone %}{{ slots.undeclared }}{% endblock %}"),
        )
        .unwrap_err();
        assert_eq!(err, PromptError::UnknownSlot("undeclared".into()));
    }

    #[test]
    fn renders_are_strict_and_bounded() {
        let slots = json!({"display_name": "Acme", "banned_topics": [], "custom_instructions": ""});
        let err = render(None, slots.clone(), json!({})).unwrap_err();
        assert!(matches!(err, PromptError::Undefined(_)), "{err:?}");

        // Output cap: a long variable.
        let err = render(
            None,
            slots.clone(),
            json!({"question": "q".repeat(300 * 1024)}),
        )
        .unwrap_err();
        assert_eq!(err, PromptError::OutputTooLarge { limit: 256 * 1024 });
        assert_eq!(err.sqlstate(), SqlState::PROGRAM_LIMIT_EXCEEDED);

        // Fuel: nested loops over request data that never print.
        let loops = "{% for a in vars.n %}{% for b in vars.n %}{% for c in vars.n %}{% if a == b %}{% endif %}{% endfor %}{% endfor %}{% endfor %}";
        check_skeleton("loops", loops).unwrap();
        let n: Vec<u32> = (0..200).collect();
        let err = CompiledPrompt::compile("loops", loops, None)
            .unwrap()
            .render(&json!({}), &json!({"n": n}), 1024)
            .unwrap_err();
        assert_eq!(err, PromptError::OutOfFuel);
        assert_eq!(err.sqlstate(), SqlState::STATEMENT_TOO_COMPLEX);

        // join refuses to amplify: many items times a long separator.
        let join = "{{ vars.items | join(vars.sep) }}";
        check_skeleton("join", join).unwrap();
        let err = CompiledPrompt::compile("join", join, None)
            .unwrap()
            .render(
                &json!({}),
                &json!({"items": vec![""; 1000], "sep": "s".repeat(1000)}),
                usize::MAX,
            )
            .unwrap_err();
        assert!(err.to_string().contains("joined string is larger"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let deep = format!(
            "{}x{}",
            "{% if true %}".repeat(2000),
            "{% endif %}".repeat(2000)
        );
        assert!(check_skeleton("deep", &deep).is_err());
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000));
        assert!(check_skeleton("deep", &parens).is_err());
    }

    #[test]
    fn literals_hold_constants_only() {
        for (source, construct) in [
            (
                "{% set a = 0 %}{% for c in slots.s %}{% set a = [[[a]]] %}{% endfor %}{{ a }}",
                "list literal",
            ),
            ("{% set a = [slots.x, slots.x] %}", "list literal"),
            ("{% set m = {'k': slots.x} %}", "map literal"),
            ("{{ slots.x[::vars.step] }}", "slice step"),
        ] {
            let err = check_skeleton("attack", source).unwrap_err();
            assert_eq!(
                err.sqlstate(),
                SqlState::FEATURE_NOT_SUPPORTED,
                "{source}: {err:?}"
            );
            assert!(err.to_string().contains(construct), "{source}: {err}");
        }
        for allowed in [
            "{% for t in ['a', 'b', [1, {'k': -2}]] %}{{ t }}{% endfor %}",
            "{{ slots.x[1:vars.n] }}{{ slots.x[::-1] }}",
        ] {
            check_skeleton("ok", allowed).unwrap();
        }
    }

    fn render_source(source: &str, vars: serde_json::Value) -> Result<String, PromptError> {
        check_skeleton("t", source)?;
        CompiledPrompt::compile("t", source, None)?.render(&json!({}), &vars, 1024 * 1024)
    }

    #[test]
    fn filters_are_charged_and_keep_their_arguments() {
        assert_eq!(
            render_source(
                "{{ vars.l | sort(reverse=true) | join(',') }}",
                json!({"l": [1, 3, 2]})
            )
            .unwrap(),
            "3,2,1"
        );
        assert_eq!(
            render_source("{{ vars.m | default('none', true) }}", json!({"m": ""})).unwrap(),
            "none"
        );
        let big: Vec<u32> = (0..100_000).collect();
        let err = render_source(
            "{% for c in vars.s %}{% if vars.big | unique %}{% endif %}{% endfor %}",
            json!({"s": "x".repeat(1000), "big": big}),
        )
        .unwrap_err();
        assert_eq!(err, PromptError::OutOfFuel);
    }

    thread_local! {
        static INTERRUPT_CHECKS: Cell<u32> = const { Cell::new(0) };
    }

    #[test]
    fn renders_check_for_cancellation() {
        fn count() {
            INTERRUPT_CHECKS.set(INTERRUPT_CHECKS.get() + 1);
        }
        set_interrupt_check(count);
        render_source("{{ vars.q | upper }} {{ vars.q }}", json!({"q": "x"})).unwrap();
        set_interrupt_check(no_interrupt_check);
        assert!(INTERRUPT_CHECKS.get() >= 2, "{}", INTERRUPT_CHECKS.get());
    }

    #[test]
    fn hostile_values_are_errors_not_panics() {
        let err = render_source("{{ 5 is divisibleby(vars.k) }}", json!({"k": 0})).unwrap_err();
        assert!(matches!(err, PromptError::Render(_)), "{err:?}");
        let err = render_source("{{ vars.q }}", json!({"q": "a\u{0}b"})).unwrap_err();
        assert_eq!(err, PromptError::NulInOutput);
        assert_eq!(
            render_source("{{ 6 is divisibleby(3) }}", json!({})).unwrap(),
            "True"
        );
    }

    #[test]
    fn json_inputs_are_bounded_in_size_and_depth() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        let err = parse_object("vars", &deep, MAX_VARS_BYTES).unwrap_err();
        assert!(
            matches!(err, PromptError::BadJson { what: "vars", .. }),
            "{err:?}"
        );
        assert_eq!(err.sqlstate(), SqlState::INVALID_PARAMETER_VALUE);
        let err = parse_object(
            "slots",
            &format!("{{\"a\": \"{}\"}}", "x".repeat(70_000)),
            MAX_SLOTS_BYTES,
        )
        .unwrap_err();
        assert_eq!(err.sqlstate(), SqlState::PROGRAM_LIMIT_EXCEEDED);
        assert_eq!(
            parse_object("vars", "[]", 10).unwrap_err(),
            PromptError::NotAnObject { what: "vars" }
        );
        assert!(parse_object("vars", "{\"q\": [[1]]}", 100).is_ok());
    }

    #[test]
    fn sizes_and_names_are_checked() {
        let err = check_skeleton("big", &"x".repeat(MAX_TEMPLATE_BYTES + 1)).unwrap_err();
        assert_eq!(err.sqlstate(), SqlState::PROGRAM_LIMIT_EXCEEDED);
        for name in ["", "Upper", "has space", "../etc", &"n".repeat(101)] {
            assert!(
                matches!(check_skeleton(name, "x"), Err(PromptError::BadName(_))),
                "{name}"
            );
        }
    }
}
