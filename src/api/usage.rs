//! Admin API, usage (OpenAI's `GET /v1/organization/usage/completions` and `…/embeddings`):
//! the tokens batch lines used, in time buckets, filtered and grouped as OpenAI's Usage API
//! does it. Every line OpenBatch runs is a batch line: `batch` is `true` when grouped by it,
//! `batch=false` matches nothing, and so does `user_ids` (there are no users here).

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::Required;
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::AppState;
use crate::domain::{BucketWidth, UsageKind, UsageQuery, LAST_TIME};
use crate::error::{ApiError, ErrorResponse};
use crate::services::usage::{self as service, UsagePage, UsageRow};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(completions).service(embeddings);
}

tag!(PageTag = "page");
tag!(BucketTag = "bucket");
tag!(CompletionsTag = "organization.usage.completions.result");
tag!(EmbeddingsTag = "organization.usage.embeddings.result");

/// A time bucket and its results, one per group (none when nothing was used).
#[derive(Serialize, ToSchema)]
struct Bucket<R> {
    #[schema(inline)]
    object: BucketTag,
    start_time: i64,
    end_time: i64,
    results: Vec<R>,
}

/// A page of buckets; pass `next_page` as `page` for the next.
#[derive(Serialize, ToSchema)]
struct Page<R> {
    #[schema(inline)]
    object: PageTag,
    data: Vec<Bucket<R>>,
    has_more: bool,
    #[schema(required = true)]
    next_page: Option<String>,
}

/// Completions usage of one bucket and group; a member not grouped by is `null`.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageCompletionsResult)]
struct CompletionsResult {
    #[schema(inline)]
    object: CompletionsTag,
    input_tokens: i64,
    output_tokens: i64,
    input_cached_tokens: i64,
    input_audio_tokens: i64,
    output_audio_tokens: i64,
    num_model_requests: i64,
    #[schema(required = true)]
    project_id: Option<String>,
    #[schema(required = true)]
    user_id: Option<String>,
    #[schema(required = true)]
    api_key_id: Option<String>,
    #[schema(required = true)]
    model: Option<String>,
    #[schema(required = true)]
    batch: Option<bool>,
    #[schema(required = true)]
    service_tier: Option<String>,
}

/// Embeddings usage of one bucket and group; a member not grouped by is `null`.
#[derive(Serialize, ToSchema)]
#[schema(as = UsageEmbeddingsResult)]
struct EmbeddingsResult {
    #[schema(inline)]
    object: EmbeddingsTag,
    input_tokens: i64,
    num_model_requests: i64,
    #[schema(required = true)]
    project_id: Option<String>,
    #[schema(required = true)]
    user_id: Option<String>,
    #[schema(required = true)]
    api_key_id: Option<String>,
    #[schema(required = true)]
    model: Option<String>,
}

/// The query parameters of a usage report, from the sets the parser takes (`UsageQuery`).
fn params(kind: UsageKind) -> Vec<Parameter> {
    let param = |name: &str, required: bool, schema: ObjectBuilder| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(if required {
                Required::True
            } else {
                Required::False
            })
            .schema(Some(schema))
            .build()
    };
    let time = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(LAST_TIME))
    };
    let strings = |name: &str, items: ObjectBuilder| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .schema(Some(ArrayBuilder::new().items(items)))
            .build()
    };
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let mut all = vec![
        param("start_time", true, time()),
        param("end_time", false, time()),
        param(
            "bucket_width",
            false,
            text().enum_values(Some(BucketWidth::ALL.map(|(_, s)| s))),
        ),
        param(
            "limit",
            false,
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1440)),
        ),
        param("page", false, text().pattern(Some("^page_[0-9]+$"))),
        strings("project_ids", text()),
        strings("user_ids", text()),
        strings("api_key_ids", text()),
        strings("models", text()),
        strings(
            "group_by",
            text().enum_values(Some(kind.groups().iter().copied())),
        ),
    ];
    if kind == UsageKind::Completions {
        all.push(param(
            "batch",
            false,
            ObjectBuilder::new().schema_type(Type::Boolean),
        ));
    }
    all
}

struct CompletionsParams;

impl IntoParams for CompletionsParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(UsageKind::Completions)
    }
}

struct EmbeddingsParams;

impl IntoParams for EmbeddingsParams {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        params(UsageKind::Embeddings)
    }
}

fn page<R>(found: UsagePage, result: impl Fn(UsageRow) -> R) -> Page<R> {
    Page {
        object: PageTag::Tag,
        data: (found.buckets.into_iter())
            .map(|b| Bucket {
                object: BucketTag::Tag,
                start_time: b.start,
                end_time: b.end,
                results: b.rows.into_iter().map(&result).collect(),
            })
            .collect(),
        has_more: found.next.is_some(),
        next_page: found.next.map(UsageQuery::cursor),
    }
}

async fn report(
    req: &HttpRequest,
    state: &AppState,
    kind: UsageKind,
) -> Result<(UsageQuery, UsagePage), ApiError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    // `end_time` is exclusive: by default the report takes in the current second.
    let q = UsageQuery::parse(kind, &pairs, crate::domain::unix_now() + 1)?;
    let found = service::report(&state.pool, kind, &q).await?;
    Ok((q, found))
}

#[utoipa::path(
    operation_id = "usageCompletions",
    tag = "organization",
    summary = "Completions usage of batch lines, in time buckets (Admin API)",
    description = "As OpenAI's Usage API: `start_time` (required), `end_time`, `bucket_width` \
                   (`1m`, `1h`, `1d`), `project_ids`, `models`, `api_key_ids`, `user_ids`, \
                   `batch`, `group_by` (`project_id`, `user_id`, `api_key_id`, `model`, \
                   `batch`, `service_tier`), `limit` (buckets per page), `page`. Arrays as \
                   repeated keys, with `[]`, or comma-separated.",
    params(CompletionsParams),
    responses(
        (status = 200, description = "A page of buckets", body = Page<CompletionsResult>),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
    )
)]
#[get("/organization/usage/completions")]
async fn completions(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (q, found) = report(&req, &state, UsageKind::Completions).await?;
    let batch = q.grouped("batch").then_some(true);
    Ok(HttpResponse::Ok().json(page(found, |r| CompletionsResult {
        object: CompletionsTag::Tag,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        input_cached_tokens: r.cached_tokens,
        input_audio_tokens: 0,
        output_audio_tokens: 0,
        num_model_requests: r.requests,
        project_id: r.project_id,
        user_id: None,
        api_key_id: r.api_key_id,
        model: r.model,
        batch,
        service_tier: None,
    })))
}

#[utoipa::path(
    operation_id = "usageEmbeddings",
    tag = "organization",
    summary = "Embeddings usage of batch lines, in time buckets (Admin API)",
    description = "As `usageCompletions`, without `batch`; `group_by` takes `project_id`, \
                   `user_id`, `api_key_id`, `model`.",
    params(EmbeddingsParams),
    responses(
        (status = 200, description = "A page of buckets", body = Page<EmbeddingsResult>),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
    )
)]
#[get("/organization/usage/embeddings")]
async fn embeddings(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (_, found) = report(&req, &state, UsageKind::Embeddings).await?;
    Ok(HttpResponse::Ok().json(page(found, |r| EmbeddingsResult {
        object: EmbeddingsTag::Tag,
        input_tokens: r.input_tokens,
        num_model_requests: r.requests,
        project_id: r.project_id,
        user_id: None,
        api_key_id: r.api_key_id,
        model: r.model,
    })))
}
