//! docs/configuration.md's table checked against the code: a row for every setting, naming its
//! environment variable and starting its default column with the default the code gives it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Settings;

const DOC: &str = include_str!("../../docs/configuration.md");

/// The routes map has no defaults of its own: one row stands for all of a route's settings.
const ROUTES: &str = "routes.<name>.*";

/// Left to the `routes.<name>.*` row: a route's model list (the default upstream takes every
/// model no route claims).
const ROUTE_ONLY: &[&str] = &["upstream.models"];

/// Every setting by dotted name, with its default as the table writes it (`None`: unset).
fn defaults() -> BTreeMap<String, Option<String>> {
    let settings = Settings::default().with_default_upstream();
    let mut out = BTreeMap::new();
    flatten("", &serde_json::to_value(settings).unwrap(), &mut out);
    out.retain(|name, _| !ROUTE_ONLY.contains(&name.as_str()));
    out
}

fn flatten(name: &str, value: &Value, out: &mut BTreeMap<String, Option<String>>) {
    let shown = match value {
        Value::Object(_) if name == "routes" => {
            out.insert(ROUTES.to_owned(), None);
            return;
        }
        Value::Object(fields) => {
            for (key, value) in fields {
                let name = if name.is_empty() {
                    key.clone()
                } else {
                    format!("{name}.{key}")
                };
                flatten(&name, value, out);
            }
            return;
        }
        Value::Null => None,
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) => Some(items.iter().map(scalar).collect::<Vec<_>>().join(",")),
        other => Some(scalar(other)),
    };
    out.insert(name.to_owned(), shown);
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn env_var(setting: &str) -> String {
    if setting == ROUTES {
        return "OPENBATCH__ROUTES__<NAME>__BASE_URL".to_owned();
    }
    format!("OPENBATCH__{}", setting.replace('.', "__").to_uppercase())
}

/// The table's rows: (setting, environment column, default column).
fn rows() -> Vec<(String, String, String)> {
    DOC.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let setting = cells[0].split('`').nth(1).unwrap_or_default();
            let cell = |i: usize| cells.get(i).copied().unwrap_or_default().to_owned();
            (setting.to_owned(), cell(1), cell(2))
        })
        .collect()
}

/// What differs, one line each; empty when the table is right.
fn differences() -> Vec<String> {
    let defaults = defaults();
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (setting, env, default) in rows() {
        if seen.insert(setting.clone(), ()).is_some() {
            out.push(format!("{setting}: more than one row"));
        }
        let Some(expected) = defaults.get(&setting) else {
            out.push(format!(
                "{setting}: a row for a setting the code does not have"
            ));
            continue;
        };
        let var = env_var(&setting);
        if !env.contains(&format!("`{var}`")) {
            out.push(format!(
                "{setting}: the environment column does not name `{var}`"
            ));
        }
        let lower = default.to_lowercase();
        let right = match expected {
            Some(value) => default.starts_with(&format!("`{value}`")),
            None => lower.starts_with("none") || lower.starts_with("unset"),
        };
        if !right {
            let want = expected
                .as_ref()
                .map_or("none".into(), |v| format!("`{v}`"));
            out.push(format!(
                "{setting}: the default column should start with {want}, not {default:?}"
            ));
        }
    }
    for setting in defaults.keys().filter(|s| !seen.contains_key(*s)) {
        out.push(format!("{setting}: no row ({})", env_var(setting)));
    }
    out
}

#[test]
fn the_configuration_table_lists_every_setting_with_its_default() {
    let differences = differences();
    assert!(
        differences.is_empty(),
        "docs/configuration.md's table differs from the code's settings:\n  {}",
        differences.join("\n  ")
    );
}

#[test]
fn every_section_of_the_settings_is_listed() {
    let defaults = defaults();
    for name in [
        "server.port",
        "limits.metadata.max_pairs",
        "webhooks.max_in_flight",
    ] {
        assert!(defaults.contains_key(name), "{name}");
    }
    assert_eq!(
        defaults["upstream.base_url"].as_deref(),
        Some(super::DEFAULT_UPSTREAM_URL)
    );
    assert_eq!(defaults["upstream.api_key"], None);
    assert_eq!(
        env_var("limits.metadata.max_pairs"),
        "OPENBATCH__LIMITS__METADATA__MAX_PAIRS"
    );
}
