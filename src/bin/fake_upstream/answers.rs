//! Answers shaped as each OpenAI endpoint's, with token counts from the request's text.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::http::{error, ok, Response};

pub(crate) fn answer(route: &str, body: &Value) -> Response {
    let Some(model) = body["model"].as_str() else {
        return error(400, "you must provide a model parameter").with("param", "model");
    };
    if model == "missing-model" {
        let msg = format!("The model `{model}` does not exist or you do not have access to it.");
        return error(404, msg)
            .with("param", "model")
            .with("code", "model_not_found");
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = Uuid::new_v4();
    match route {
        "/chat/completions" => chat(body, model, created, id),
        "/completions" => completion(body, model, created, id),
        "/embeddings" => embeddings(body, model),
        "/responses" => response(body, model, created, id),
        _ => {
            let results: Vec<Value> = (strings(&body["input"]).iter())
                .map(|_| json!({"flagged": false, "categories": {}, "category_scores": {}}))
                .collect();
            ok(json!({"id": format!("modr-{id}"), "model": model, "results": results}))
        }
    }
}

fn chat(body: &Value, model: &str, created: u64, id: Uuid) -> Response {
    let Some(messages) = body["messages"].as_array() else {
        return error(400, "'messages' is a required property").with("param", "messages");
    };
    let texts: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
    let answer = format!("echo: {}", texts.last().map_or("", String::as_str));
    let usage = usage(tokens(&texts.join(" ")), tokens(&answer));
    ok(json!({
        "id": format!("chatcmpl-{id}"), "object": "chat.completion",
        "created": created, "model": model,
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": answer},
            "logprobs": null, "finish_reason": "stop",
        }],
        "usage": usage,
    }))
}

fn completion(body: &Value, model: &str, created: u64, id: Uuid) -> Response {
    let prompts = strings(&body["prompt"]);
    let answers: Vec<String> = prompts.iter().map(|p| format!("echo: {p}")).collect();
    let choices: Vec<Value> = (answers.iter().enumerate())
        .map(|(i, t)| json!({"text": t, "index": i, "logprobs": null, "finish_reason": "stop"}))
        .collect();
    let usage = usage(tokens(&prompts.join(" ")), tokens(&answers.join(" ")));
    ok(json!({
        "id": format!("cmpl-{id}"), "object": "text_completion",
        "created": created, "model": model, "choices": choices, "usage": usage,
    }))
}

fn embeddings(body: &Value, model: &str) -> Response {
    if body["input"].is_null() {
        return error(400, "'input' is a required property").with("param", "input");
    }
    let inputs = strings(&body["input"]);
    let data: Vec<Value> = (inputs.iter().enumerate())
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embed(text)}))
        .collect();
    let n: u64 = inputs.iter().map(|t| tokens(t)).sum();
    ok(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }))
}

fn response(body: &Value, model: &str, created: u64, id: Uuid) -> Response {
    // `input` is a string, or a list of messages (or of bare strings).
    let texts: Vec<String> = match &body["input"] {
        Value::Array(items) => (items.iter())
            .map(|item| {
                item.as_str()
                    .map_or_else(|| text_of(&item["content"]), str::to_string)
            })
            .collect(),
        other => strings(other),
    };
    let answer = format!("echo: {}", texts.last().map_or("", String::as_str));
    let (input, output) = (tokens(&texts.join(" ")), tokens(&answer));
    ok(json!({
        "id": format!("resp_{id}"), "object": "response", "created_at": created,
        "status": "completed", "error": null, "incomplete_details": null, "model": model,
        "output": [{
            "type": "message", "id": format!("msg_{}", Uuid::new_v4()),
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": answer, "annotations": []}],
        }],
        "usage": {
            "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output,
        },
    }))
}

/// Deterministic stand-in for a tokenizer: whitespace-separated words, never less than 1.
pub(crate) fn tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

pub(crate) fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Text of a message `content`: a string, or an array of parts whose `text`s are joined by spaces.
pub(crate) fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => (parts.iter())
            .filter_map(|p| p.as_str().or_else(|| p["text"].as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A `prompt` / `input` that may be a string or an array (token-id arrays become JSON text).
pub(crate) fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) if !items.is_empty() => (items.iter())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![String::new()],
    }
}

/// Eight floats in [-1, 1] from the sha256 of the text: stable across runs, distinct per input.
pub(crate) fn embed(text: &str) -> Vec<f64> {
    (Sha256::digest(text.as_bytes()).chunks(4))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64 / u32::MAX as f64 * 2.0 - 1.0)
        .collect()
}

/// The prompt tokens of a request body, as the answers' `usage` counts them: of `messages`,
/// else of `prompt`, else of `input`.
pub(crate) fn prompt_tokens(body: &Value) -> u64 {
    if let Some(messages) = body["messages"].as_array() {
        let texts: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
        return tokens(&texts.join(" "));
    }
    let field = if body.get("prompt").is_some() {
        "prompt"
    } else {
        "input"
    };
    tokens(&strings(&body[field]).join(" "))
}
