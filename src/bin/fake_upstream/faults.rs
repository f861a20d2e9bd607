//! Faults: planned per request body (`"fake": {"fail": [...]}`) or drawn at the global rates.

use serde_json::Value;
use uuid::Uuid;

use super::http::{error, ok, Reply, Response};
use super::Args;

pub(crate) enum Fault {
    Status(u16),
    Hang,
    Drop,
    /// 307 to the same path: a client that follows it sends the line a second time.
    Redirect,
    /// 502 with a gateway's HTML error page.
    Html,
}

/// What a proxy in front of a model server answers when the server is down.
pub(crate) const GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n";

pub(crate) fn shed() -> Response {
    let msg = "The server is overloaded: too many requests are waiting (fake-upstream --queue-max)";
    let mut resp = error(429, msg).with("code", "rate_limit_exceeded");
    resp.headers.push(("Retry-After", "1"));
    resp
}

/// The fault scheduled for execution `k` of a body carrying `"fake": {...}`.
pub(crate) fn planned_fault(directive: &Value, k: usize) -> Result<Option<Fault>, String> {
    let steps = match &directive["fail"] {
        Value::Null => return Ok(None),
        Value::Array(steps) => steps,
        _ => return Err("fake.fail must be an array".into()),
    };
    match steps.get(k) {
        None => Ok(None),
        Some(Value::String(s)) if s == "hang" => Ok(Some(Fault::Hang)),
        Some(Value::String(s)) if s == "drop" => Ok(Some(Fault::Drop)),
        Some(Value::String(s)) if s == "redirect" => Ok(Some(Fault::Redirect)),
        Some(Value::String(s)) if s == "html" => Ok(Some(Fault::Html)),
        Some(step) => match step.as_u64() {
            Some(code @ 400..=599) => Ok(Some(Fault::Status(code as u16))),
            _ => Err(format!(
                "fake.fail[{k}] must be a 4xx/5xx, \"hang\", \"drop\", \"redirect\" or \"html\": {step}"
            )),
        },
    }
}

/// One draw against cumulative thresholds, so each rate is exactly that fault's probability
/// (as long as the rates add up to at most 1).
pub(crate) fn random_fault(args: &Args) -> Option<Fault> {
    let r = random_unit();
    let mut edge = 0.0;
    [
        (args.hang_rate, Fault::Hang),
        (args.drop_rate, Fault::Drop),
        (args.rate_429, Fault::Status(429)),
        (args.error_rate, Fault::Status(500)),
    ]
    .into_iter()
    .find_map(|(rate, fault)| {
        edge += rate;
        (r < edge).then_some(fault)
    })
}

/// Uniform in [0, 1). There is no `rand` in our dependencies, so take the top 48 bits of a v4
/// UUID, which are all random (its version and variant bits sit lower down).
pub(crate) fn random_unit() -> f64 {
    (Uuid::new_v4().as_u128() >> 80) as f64 / (1u64 << 48) as f64
}

pub(crate) fn jitter(max_ms: u64) -> u64 {
    (random_unit() * (max_ms + 1) as f64) as u64
}

impl Fault {
    /// The answer this fault gives (`planned`: asked for by the request's `fake` directive).
    pub(crate) fn reply(self, planned: bool) -> Reply {
        Reply::Send(match self {
            Fault::Hang => return Reply::Hang,
            Fault::Drop => return Reply::Drop,
            Fault::Redirect => {
                let mut resp = error(307, "fake-upstream redirects this request");
                resp.headers.push(("Location", "/v1/chat/completions"));
                resp
            }
            Fault::Html => Response {
                status: 502,
                html: Some(GATEWAY_PAGE),
                ..ok(Value::Null)
            },
            Fault::Status(429) => {
                // Real servers' back-off hints; tests get the short one so retries stay fast.
                let mut resp = error(429, "Rate limit reached (fake-upstream)");
                resp.headers.push(("Retry-After", "1"));
                if planned {
                    resp.headers.push(("retry-after-ms", "200"));
                }
                resp.with("code", "rate_limit_exceeded")
            }
            Fault::Status(status) => error(status, format!("fake-upstream injected a {status}")),
        })
    }
}
