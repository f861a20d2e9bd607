//! How the CLI prints: aligned tables on a terminal, the API's JSON for scripts, colour only
//! on a terminal (and never with `NO_COLOR`).

use std::io::IsTerminal;

use serde_json::Value;

pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

fn colour_allowed() -> bool {
    stdout_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A batch status, coloured on a terminal.
pub fn status(s: &str) -> String {
    if !colour_allowed() {
        return s.to_owned();
    }
    let code = match s {
        "completed" => "32",
        "failed" | "expired" => "31",
        "cancelling" | "cancelled" => "33",
        "in_progress" | "finalizing" => "36",
        _ => "2",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// Prints the API's object as pretty JSON: `--json` output is the API's own shape.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}

/// Prints rows under headers, each column as wide as its widest cell. Cells may carry ANSI
/// colour codes; widths count visible characters only.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(visible(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(w - visible(cell) + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC; `-` for null.
pub fn time(v: &Value) -> String {
    let Some(secs) = v.as_i64() else {
        return "-".to_owned();
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration in seconds as `1h 02m`, `3m 05s` or `12s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

pub fn bytes(n: &Value) -> String {
    let Some(n) = n.as_u64() else {
        return "-".to_owned();
    };
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `done/total` (with failures) for a batch's `request_counts`.
pub fn progress(batch: &Value) -> String {
    let c = &batch["request_counts"];
    let (total, done, failed) = (
        c["total"].as_i64().unwrap_or(0),
        c["completed"].as_i64().unwrap_or(0),
        c["failed"].as_i64().unwrap_or(0),
    );
    if total == 0 {
        return "-".to_owned();
    }
    let pct = (done + failed) * 100 / total;
    if failed > 0 {
        format!("{}/{total} {pct}% ({failed} failed)", done + failed)
    } else {
        format!("{done}/{total} {pct}%")
    }
}

/// `k=v, k2=v2`, or `-`.
pub fn metadata(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".to_owned(),
    }
}

pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One batch as `key: value` lines.
pub fn batch_detail(b: &Value) {
    let rows: Vec<(&str, String)> = vec![
        ("id", text(&b["id"])),
        ("status", status(b["status"].as_str().unwrap_or("?"))),
        ("endpoint", text(&b["endpoint"])),
        ("model", text(&b["model"])),
        ("progress", progress(b)),
        ("input file", text(&b["input_file_id"])),
        ("output file", text(&b["output_file_id"])),
        ("error file", text(&b["error_file_id"])),
        ("metadata", metadata(&b["metadata"])),
        ("created", time(&b["created_at"])),
        ("in progress", time(&b["in_progress_at"])),
        ("finalizing", time(&b["finalizing_at"])),
        ("completed", time(&b["completed_at"])),
        ("failed", time(&b["failed_at"])),
        ("cancelled", time(&b["cancelled_at"])),
        ("expired", time(&b["expired_at"])),
        ("expires", time(&b["expires_at"])),
    ];
    for (k, v) in rows {
        if v != "-" || matches!(k, "id" | "status" | "model") {
            println!("{k:<12} {v}");
        }
    }
    if let Some(u) = b["usage"].as_object() {
        println!(
            "{:<12} {} in / {} out / {} total tokens",
            "usage",
            text(&u["input_tokens"]),
            text(&u["output_tokens"]),
            text(&u["total_tokens"])
        );
    }
    for e in b["errors"]["data"].as_array().into_iter().flatten() {
        println!("{:<12} {}", "error", validation_error(e));
    }
}

/// A validation error as `line 3: invalid_json_line: message`.
pub fn validation_error(e: &Value) -> String {
    let line = e["line"]
        .as_i64()
        .map(|l| format!("line {l}: "))
        .unwrap_or_default();
    format!("{line}{}: {}", text(&e["code"]), text(&e["message"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time(&json!(0)), "1970-01-01 00:00:00");
        assert_eq!(time(&json!(1_798_761_600)), "2027-01-01 00:00:00");
        assert_eq!(time(&json!(951_825_599)), "2000-02-29 11:59:59");
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes(&json!(512)), "512 B");
        assert_eq!(bytes(&json!(1536)), "1.5 KiB");
        assert_eq!(bytes(&json!(3 * 1024 * 1024)), "3.0 MiB");
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m 05s");
        assert_eq!(duration(3720), "1h 02m");
    }

    #[test]
    fn progress_counts_failures() {
        let b = json!({"request_counts": {"total": 10, "completed": 4, "failed": 1}});
        assert_eq!(progress(&b), "5/10 50% (1 failed)");
        assert_eq!(progress(&json!({"request_counts": null})), "-");
    }

    #[test]
    fn ansi_codes_do_not_count_towards_width() {
        assert_eq!(strip_ansi("\x1b[32mcompleted\x1b[0m"), "completed");
    }
}
