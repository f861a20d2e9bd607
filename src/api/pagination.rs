//! Cursor pagination as OpenAI's lists do it: `?after=<id>&limit=<n>`, answered with
//! `{"object": "list", "data", "first_id", "last_id", "has_more"}`.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;

/// The paging part of a list's query string (flattened into each list's own parameters).
#[derive(Deserialize)]
pub struct PageParams {
    after: Option<String>,
    limit: Option<String>,
}

/// A validated page request: where to start and how many at most.
pub struct Pagination<Id> {
    pub after: Option<Id>,
    pub limit: u32,
}

impl PageParams {
    /// `parse_id` reads a cursor; one that is not an id of this list is a 400 on `after`.
    pub fn parse<Id, E>(
        &self,
        default_limit: u32,
        max_limit: u32,
        parse_id: impl FnOnce(&str) -> Result<Id, E>,
    ) -> Result<Pagination<Id>, ApiError> {
        let limit = match self.limit.as_deref() {
            None => default_limit,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=max_limit).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                    "Invalid 'limit': expected an integer between 1 and {max_limit}, got '{raw}'."
                ))
                    .with_param("limit")
                    .with_code("invalid_value"))
                }
            },
        };
        // An empty cursor is no cursor (some clients send `after=`).
        let after = match self.cursor() {
            Some(raw) => Some(parse_id(raw).map_err(|_| unknown_cursor(raw))?),
            None => None,
        };
        Ok(Pagination { after, limit })
    }

    fn cursor(&self) -> Option<&str> {
        self.after.as_deref().filter(|a| !a.is_empty())
    }

    /// For a cursor that parsed but names nothing in this project's list.
    pub fn unknown_cursor(&self) -> ApiError {
        unknown_cursor(self.cursor().unwrap_or_default())
    }
}

fn unknown_cursor(raw: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid 'after': '{raw}' is not an object in this list."
    ))
    .with_param("after")
    .with_code("invalid_value")
}

/// One page of a list, in OpenAI's envelope.
pub fn list_page(data: Vec<Value>, has_more: bool) -> Value {
    let id = |o: Option<&Value>| o.and_then(|v| v.get("id")).cloned();
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}
