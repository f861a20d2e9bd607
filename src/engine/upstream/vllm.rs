//! vLLM's load as its Prometheus `/metrics` page shows it: the requests waiting in its
//! scheduler queue and those running on the GPU, summed over every label set (one per engine of
//! a data-parallel server, one per model).
//!
//! The page comes from a server we do not control, so the parser never fails on it: comments,
//! other metrics, malformed lines and values that are not a count (NaN, infinite, negative) are
//! skipped, and a page without either gauge is "no gauges" rather than "idle".

const WAITING: &str = "vllm:num_requests_waiting";
const RUNNING: &str = "vllm:num_requests_running";

/// The two gauges; one that is absent from a page holding the other counts as 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VllmLoad {
    pub waiting: f64,
    pub running: f64,
}

/// `None` when neither gauge is present.
pub fn parse(text: &str) -> Option<VllmLoad> {
    let (mut waiting, mut running) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace());
        let (name, rest) = line.split_at(name_end.unwrap_or(line.len()));
        // Exact names: `vllm:num_requests_waiting_by_reason` and the like are other metrics.
        let sum = match name {
            WAITING => &mut waiting,
            RUNNING => &mut running,
            _ => continue,
        };
        if let Some(value) = sample_value(rest).filter(|v| v.is_finite() && *v >= 0.0) {
            *sum = Some(sum.unwrap_or(0.0) + value);
        }
    }
    if waiting.is_none() && running.is_none() {
        return None;
    }
    Some(VllmLoad {
        waiting: waiting.unwrap_or(0.0),
        running: running.unwrap_or(0.0),
    })
}

/// The value of a sample line after its name: `{labels} value [timestamp]`, labels optional.
fn sample_value(rest: &str) -> Option<f64> {
    let rest = match rest.strip_prefix('{') {
        Some(labels) => after_labels(labels)?,
        None => rest,
    };
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next()?.parse::<f64>().ok()?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    fields.next().is_none().then_some(value)
}

/// What follows the `}` closing a label set, skipping quoted values (which may hold `}` or an
/// escaped `"`).
fn after_labels(labels: &str) -> Option<&str> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in labels.bytes().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => quoted = false,
            (false, _, b'"') => quoted = true,
            (false, _, b'}') => return Some(&labels[i + 1..]),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{parse, VllmLoad};

    /// Modelled on a vLLM (v1 engine) OpenAI server's `/metrics`, data-parallel over two engines.
    const PAGE: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12733.0
python_gc_objects_collected_total{generation="1"} 2071.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2.318520320e+09
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 31.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 30.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:num_requests_waiting_by_reason A lookalike that must not be summed in.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 100.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.8731
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""} 1.745e+09
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.263648e+06
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4012.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4012.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 9281.4
"#;

    #[test]
    fn sums_both_gauges_over_every_engine_and_ignores_the_rest() {
        let load = parse(PAGE).expect("gauges present");
        assert_eq!(
            load,
            VllmLoad {
                waiting: 3.0,
                running: 61.0
            }
        );
    }

    #[test]
    fn a_page_without_the_gauges_is_none_not_idle() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("# TYPE vllm:num_requests_waiting gauge\n"), None);
        assert_eq!(parse("python_info{version=\"3.12\"} 1.0\nup 1\n"), None);
        // Present but unusable everywhere is absent too.
        assert_eq!(
            parse("vllm:num_requests_waiting NaN\nvllm:num_requests_running -1\n"),
            None
        );
    }

    #[test]
    fn one_gauge_alone_counts_the_other_as_zero() {
        let load = parse("vllm:num_requests_waiting 2\r\n").expect("waiting present");
        assert_eq!(
            load,
            VllmLoad {
                waiting: 2.0,
                running: 0.0
            }
        );
    }

    #[test]
    fn unusable_values_and_malformed_lines_are_skipped() {
        let page = concat!(
            "vllm:num_requests_waiting{engine=\"0\"} NaN\n",
            "vllm:num_requests_waiting{engine=\"1\"} -3\n",
            "vllm:num_requests_waiting{engine=\"2\"} +Inf\n",
            "vllm:num_requests_waiting{engine=\"3\"} 4 1712345678901\n",
            "vllm:num_requests_waiting{engine=\"4\" 9\n",
            "vllm:num_requests_waiting{engine=\"5\"} nine\n",
            "vllm:num_requests_waiting{engine=\"6\"} 9 12 extra\n",
            "vllm:num_requests_waiting{engine=\"7\"}\n",
            "vllm:num_requests_waiting\n",
            "  vllm:num_requests_running{model_name=\"a}b\\\"c\"}   5e0  \n",
            "vllm:num_requests_running{} 1\n",
            "vllm:num_requests_runningx 100\n",
            "#vllm:num_requests_running 100\n",
        );
        assert_eq!(
            parse(page),
            Some(VllmLoad {
                waiting: 4.0,
                running: 6.0
            })
        );
    }

    proptest! {
        #[test]
        fn junk_never_panics(text in "\\PC*") {
            let _ = parse(&text);
        }

        #[test]
        fn junk_around_the_gauges_never_hides_them(
            junk in proptest::collection::vec("[ -~]{0,40}", 0..20),
            waiting in 0u32..1000,
        ) {
            // Junk lines that happen to be gauge samples would add to the sum; keep them apart.
            let junk: Vec<_> = junk.into_iter().filter(|l| !l.trim_start().starts_with("vllm:")).collect();
            let page = format!("{}\nvllm:num_requests_waiting{{x=\"}}\"}} {waiting}\n{}", junk.join("\n"), junk.join("\n"));
            prop_assert_eq!(parse(&page), Some(VllmLoad { waiting: f64::from(waiting), running: 0.0 }));
        }
    }
}
