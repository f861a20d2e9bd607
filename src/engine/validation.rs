//! Checks of an input file's lines, line by line: nothing here holds more than one line.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

use self::seen::SeenIds;
use crate::domain::{Endpoint, LineError, MAX_REPORTED_ERRORS, MAX_REQUESTS};
use crate::jsonl::{Piece, ValidLine};

/// The fields each endpoint cannot do without.
fn required_body_fields(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::ChatCompletions => &["messages"],
        Endpoint::Completions => &["prompt"],
        Endpoint::Embeddings | Endpoint::Responses | Endpoint::Moderations => &["input"],
    }
}

/// A JSON object's members, the values left as written: checking a line reads its few fields
/// without building a tree of the rest (a prompt of many KiB is scanned once, never copied).
/// A repeated key keeps its last value, as a full parse would.
type Members<'a> = HashMap<Cow<'a, str>, &'a RawValue>;

fn members(raw: &str) -> Result<Members<'_>, serde_json::Error> {
    serde_json::from_str(raw)
}

/// A member that is present and not `null`.
fn present<'a>(m: &Members<'a>, key: &str) -> Option<&'a RawValue> {
    m.get(key).copied().filter(|v| v.get() != "null")
}

/// A small member read as a value (strings, booleans); anything else is left alone.
fn scalar(v: &RawValue) -> Value {
    serde_json::from_str(v.get()).unwrap_or(Value::Null)
}

/// PostgreSQL's text cannot hold NUL: a value stored in a column (the batch's model) or
/// compared as text must not contain one, or every attempt to queue the batch fails the same way.
fn nul(line: usize, param: &str) -> LineError {
    LineError::at(
        line,
        "invalid_request",
        param,
        format!("'{param}' must not contain the NUL character (\\u0000)."),
    )
}

fn missing(line: usize, param: &str) -> LineError {
    LineError::at(
        line,
        "missing_required_parameter",
        param,
        format!("Missing required parameter: '{param}'."),
    )
}

/// Checks one non-blank line (`line` is its 1-based number in the file).
pub fn check_line(raw: &[u8], line: usize, endpoint: Endpoint) -> Result<ValidLine, LineError> {
    let obj = line_object(raw, line)?;
    let custom_id = custom_id(&obj, line)?;
    check_request(&obj, line, endpoint)?;
    let raw_body = present(&obj, "body").ok_or_else(|| missing(line, "body"))?;
    let model = check_body(raw_body, line, endpoint)?;
    Ok(ValidLine {
        custom_id,
        model,
        body: raw_body.get().to_owned(),
    })
}

/// The line read as a JSON object.
fn line_object(raw: &[u8], line: usize) -> Result<Members<'_>, LineError> {
    let not_json = |e: &dyn std::fmt::Display| {
        LineError::at(
            line,
            "invalid_json_line",
            "line",
            format!("This line is not parseable as valid JSON: {e}."),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|e| not_json(&e))?;
    members(text).map_err(|e| {
        if e.is_data() {
            // Valid JSON, but not an object.
            LineError::at(
                line,
                "invalid_json_line",
                "line",
                "This line is not a JSON object.",
            )
        } else {
            not_json(&e)
        }
    })
}

fn custom_id(obj: &Members<'_>, line: usize) -> Result<String, LineError> {
    match present(obj, "custom_id").map(scalar) {
        None => Err(missing(line, "custom_id")),
        Some(Value::String(s)) if s.contains('\0') => Err(nul(line, "custom_id")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(LineError::at(
            line,
            "invalid_request",
            "custom_id",
            "'custom_id' must be a non-empty string.",
        )),
    }
}

/// The request's `method` and `url`: a POST to the batch's endpoint.
fn check_request(obj: &Members<'_>, line: usize, endpoint: Endpoint) -> Result<(), LineError> {
    match present(obj, "method") {
        None => return Err(missing(line, "method")),
        Some(m) if scalar(m) == "POST" => {}
        Some(other) => {
            return Err(LineError::at(
                line,
                "invalid_request",
                "method",
                format!(
                    "Invalid method {other}: batch requests must use 'POST'.",
                    other = other.get()
                ),
            ))
        }
    }
    match present(obj, "url") {
        None => Err(missing(line, "url")),
        Some(u) if scalar(u) == endpoint.as_str() => Ok(()),
        Some(other) => Err(LineError::at(
            line,
            "invalid_url",
            "url",
            format!(
                "The URL {} does not match the batch's endpoint '{}'.",
                other.get(),
                endpoint.as_str()
            ),
        )),
    }
}

/// The request body: an object naming a model, not streamed, with the endpoint's fields.
/// Returns the model.
fn check_body(raw_body: &RawValue, line: usize, endpoint: Endpoint) -> Result<String, LineError> {
    let body = members(raw_body.get()).map_err(|_| {
        LineError::at(
            line,
            "invalid_request",
            "body",
            "'body' must be a JSON object.",
        )
    })?;
    let model = match present(&body, "model").map(scalar) {
        Some(Value::String(m)) if m.contains('\0') => return Err(nul(line, "body.model")),
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return Err(missing(line, "body.model")),
    };
    if present(&body, "stream").is_some_and(|s| s.get() == "true") {
        return Err(LineError::at(
            line,
            "streaming_unsupported",
            "body.stream",
            "Streaming is not supported in batches: remove 'stream' or set it to false.",
        ));
    }
    for field in required_body_fields(endpoint) {
        if present(&body, field).is_none() {
            return Err(missing(line, &format!("body.{field}")));
        }
    }
    Ok(model)
}

/// File-level rules that need to see every line: unique ids, one model, size limits.
pub struct FileCheck {
    endpoint: Endpoint,
    /// Each custom_id seen, with its line, in 16 bytes.
    seen: SeenIds,
    model: Option<String>,
    /// Each distinct model of a valid line, with the first line that names it.
    models: HashMap<String, usize>,
    pub requests: usize,
    /// `limits.max_batch_lines`.
    max_requests: usize,
    pub errors: Vec<LineError>,
    too_many_reported: bool,
}

impl FileCheck {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            seen: SeenIds::new(),
            model: None,
            models: HashMap::new(),
            requests: 0,
            max_requests: MAX_REQUESTS,
            errors: Vec::new(),
            too_many_reported: false,
        }
    }

    /// At most `max` requests (OpenAI's 50,000 unless raised).
    pub fn with_max_requests(mut self, max: usize) -> Self {
        self.max_requests = max;
        self
    }

    /// True once no more problems will be reported.
    pub fn is_saturated(&self) -> bool {
        self.errors.len() >= MAX_REPORTED_ERRORS
    }

    fn report(&mut self, e: LineError) {
        if !self.is_saturated() {
            self.errors.push(e);
        }
    }

    /// Counts a request; false (after reporting it once) beyond `max_requests`.
    fn count_request(&mut self, line: usize) -> bool {
        self.requests += 1;
        if self.requests > self.max_requests {
            if !self.too_many_reported {
                self.too_many_reported = true;
                self.report(LineError::at(
                    line,
                    "too_many_requests",
                    "input_file_id",
                    format!(
                        "The input file has more than {} requests.",
                        self.max_requests
                    ),
                ));
            }
            return false;
        }
        true
    }

    /// Checks a line as the splitter handed it over; returns it when it can be queued.
    pub fn piece(&mut self, piece: Piece<'_>, line: usize) -> Option<ValidLine> {
        match piece {
            Ok(raw) => self.line(raw, line),
            Err(t) => {
                if self.count_request(line) {
                    self.report(LineError::at(
                        line,
                        "line_too_long",
                        "line",
                        format!(
                            "This line is longer than the limit of {} bytes for one request (it has at least {} bytes).",
                            t.limit, t.bytes
                        ),
                    ));
                }
                None
            }
        }
    }

    /// Checks a line; returns it when it can be queued.
    pub fn line(&mut self, raw: &[u8], line: usize) -> Option<ValidLine> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if !self.count_request(line) {
            return None;
        }
        let valid = match check_line(raw, line, self.endpoint) {
            Ok(v) => v,
            Err(e) => {
                self.report(e);
                return None;
            }
        };
        // Past 2^32 lines (far beyond `MAX_LINES_CEILING`) only a message's line number would wrap.
        if let Some(first) = self.seen.first_use(&valid.custom_id, line as u32) {
            let msg = format!(
                "The custom_id '{}' is used on line {first} and again here; custom_id values must be unique.",
                valid.custom_id
            );
            self.report(LineError::at(line, "duplicate_custom_id", "custom_id", msg));
            return None;
        }
        if !self.models.contains_key(&valid.model) {
            self.models.insert(valid.model.clone(), line);
        }
        match &self.model {
            None => self.model = Some(valid.model.clone()),
            Some(m) if *m != valid.model => {
                let msg = format!(
                    "All requests in a batch must use the same model: this line uses '{}', earlier lines '{m}'.",
                    valid.model
                );
                self.report(LineError::at(line, "mixed_models", "body.model", msg));
                return None;
            }
            Some(_) => {}
        }
        Some(valid)
    }

    /// Each distinct model the file's valid lines name, with the first line naming it, in
    /// order of those lines.
    pub fn models(&self) -> Vec<(&str, usize)> {
        let mut models: Vec<(&str, usize)> = self
            .models
            .iter()
            .map(|(m, line)| (m.as_str(), *line))
            .collect();
        models.sort_unstable_by_key(|&(_, line)| line);
        models
    }

    /// The batch's model, once the whole file passed.
    pub fn finish(mut self) -> Result<String, Vec<LineError>> {
        if self.requests == 0 && self.errors.is_empty() {
            self.report(LineError::file(
                "empty_file",
                Some("input_file_id"),
                "The input file contains no requests.",
            ));
        }
        match (self.errors.is_empty(), self.model) {
            (true, Some(model)) => Ok(model),
            _ => Err(self.errors),
        }
    }
}

mod seen;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
