//! Cursor pagination as OpenAI's lists do it: `?after=<id>&limit=<n>`, answered with
//! `{"object": "list", "data", "first_id", "last_id", "has_more"}`.

use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::Required;
use utoipa::ToSchema;

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
                    return Err(ApiError::InvalidLimit {
                        max: max_limit,
                        raw: raw.to_owned(),
                    })
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
    ApiError::UnknownCursor {
        raw: raw.to_owned(),
    }
}

/// The `after` and `limit` query parameters of a list whose `limit` defaults to `DEFAULT` and
/// is at most `MAX` (the values `PageParams::parse` is given), for the OpenAPI document.
pub struct PageQuery<const DEFAULT: u32, const MAX: u32>;

impl<const DEFAULT: u32, const MAX: u32> utoipa::IntoParams for PageQuery<DEFAULT, MAX> {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("after")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "A cursor: the id of the last object of the previous page.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(MAX))
                        .default(Some(DEFAULT.into())),
                ))
                .build(),
        ]
    }
}

/// A list's `object`.
#[derive(Clone, Copy, Serialize, ToSchema)]
pub enum ListTag {
    #[serde(rename = "list")]
    List,
}

/// One page of `$item`s in OpenAI's list envelope, named `$name` in the OpenAPI document.
macro_rules! list_type {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(serde::Serialize, utoipa::ToSchema)]
        pub(super) struct $name {
            #[schema(inline)]
            object: $crate::api::pagination::ListTag,
            data: Vec<$item>,
            #[schema(required = true)]
            first_id: Option<String>,
            #[schema(required = true)]
            last_id: Option<String>,
            has_more: bool,
        }

        impl $name {
            pub(super) fn new(data: Vec<$item>, has_more: bool) -> Self {
                Self {
                    object: $crate::api::pagination::ListTag::List,
                    first_id: data.first().map(|o| o.id.clone()),
                    last_id: data.last().map(|o| o.id.clone()),
                    data,
                    has_more,
                }
            }
        }
    };
}
pub(crate) use list_type;
