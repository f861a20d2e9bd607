use std::time::Duration;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{RefOr, Required};
use utoipa::{PartialSchema, ToSchema};
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::spool::{Guard, GuardSettings, FORM_OVERHEAD_BYTES};
use super::{body, record_path_id, AppState, Project};
use crate::config::LimitSettings;
use crate::domain::{string_enum, ExpiresAfter, FileId, Invalid, Purpose};
use crate::error::{ApiError, ErrorResponse};
use crate::services::files::{self, FileRecord, Incoming, ListQuery, NewUpload, Order};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(upload)
        .service(list)
        .service(retrieve)
        .service(delete)
        .service(content);
}

const MAX_TEXT_FIELD_BYTES: usize = 1024;
/// Parts a form may have (OpenAI's upload has four); each costs a header parse.
pub(super) const MAX_PARTS: usize = 16;

pub(super) fn malformed(e: MultipartError) -> ApiError {
    ApiError::MalformedMultipart {
        detail: e.to_string(),
    }
}

/// A small text part such as `purpose`.
async fn read_text(guard: &Guard, field: &mut Field, name: &str) -> Result<String, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| guard.explain(malformed(e)))?;
        if buf.len() + chunk.len() > MAX_TEXT_FIELD_BYTES {
            return Err(
                Invalid::new(name, "invalid_value", format!("'{name}' is too long.")).into(),
            );
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf.to_vec())
        .map(|s| s.trim().to_owned())
        .map_err(|_| {
            Invalid::new(
                name,
                "invalid_value",
                format!("'{name}' must be UTF-8 text."),
            )
            .into()
        })
}

/// The file part, spooled as it arrives (`files::Incoming`).
async fn receive_file(
    limits: &LimitSettings,
    guard: &Guard,
    field: &mut Field,
    purpose: Option<Purpose>,
) -> Result<Incoming, ApiError> {
    let filename = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .unwrap_or("file")
        .to_owned();
    let mut incoming = Incoming::start(limits, filename, purpose).await?;
    guard.set_in_file(true);
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|e| guard.explain(malformed(e)))?;
        incoming.write(&chunk).await?;
    }
    guard.set_in_file(false);
    Ok(incoming)
}

/// `POST /v1/files`. Parts may come in any order. A `batch` file is checked to be UTF-8 here;
/// its lines are checked as JSON requests when a batch using it is validated.
///
/// Nothing a client controls can hold a shared resource for long: the whole request (not
/// only the file) is counted against the limits, a client that stalls is cut off (408), a
/// replica receives at most `limits.max_concurrent_uploads` at once, and one project at most
/// `limits.max_concurrent_uploads_per_project` of them (429), and the database is
/// used only once the request is fully in.
#[utoipa::path(
    operation_id = "createFile",
    tag = "files",
    summary = "Upload a file",
    description = "Parts may come in any order. A `batch` file must be UTF-8; its lines are \
                   checked as JSON requests when a batch using it is validated.",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The stored file", body = FileObject),
        (status = 400, response = ErrorResponse),
        (status = 403, description = "The project's file storage quota \
            (limits.max_stored_bytes_per_project) would be exceeded: code storage_quota_exceeded",
            body = crate::error::Envelope),
        (status = 408, description = "The client stopped sending the body \
            (limits.upload_idle_timeout_secs) or took longer than limits.upload_timeout_secs: \
            code request_timeout", body = crate::error::Envelope),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/files")]
async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    refuse_early(&req, &state.limits)?;
    let _slot = state
        .uploads
        .take(&project)
        .map_err(ApiError::TooManyUploads)?;
    let form = read_form(&req, payload, &state.limits).await?;
    let file = files::upload(&state.content, &state.limits, &project, form).await?;
    tracing::Span::current().record("file_id", file.id.as_str());
    tracing::info!(file_id = %file.id, bytes = file.bytes, "file uploaded");
    Ok(HttpResponse::Ok().json(FileObject::new(&file)))
}

/// Refused before a byte of the body is read.
fn refuse_early(req: &HttpRequest, limits: &LimitSettings) -> Result<(), ApiError> {
    let max = limits.max_upload_bytes;
    refuse_form_early(
        req,
        "'file' and 'purpose' parts",
        max,
        ApiError::FileTooLarge { max },
    )
}

/// A form upload refused before a byte of its body is read: not multipart/form-data (naming
/// the `parts` expected), or declaring a `Content-Length` past `max_content` and the form's
/// overhead (`too_large`).
pub(super) fn refuse_form_early(
    req: &HttpRequest,
    parts: &'static str,
    max_content: u64,
    too_large: ApiError,
) -> Result<(), ApiError> {
    let is_multipart = body::content_type(req)
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return Err(ApiError::NotMultipart { parts });
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_content.saturating_add(FORM_OVERHEAD_BYTES)) {
        return Err(too_large);
    }
    Ok(())
}

// `read_form` fills it part by part (unknown parts are ignored); the document describes the
// form from it.
/// A file and its purpose; the parts may come in any order.
#[derive(Default, ToSchema)]
#[schema(as = FileUpload)]
struct UploadForm {
    /// The content; its file name is kept as `filename`.
    #[schema(value_type = String, format = Binary, required = true)]
    file: Option<Incoming>,
    #[schema(schema_with = Purpose::uploadable_schema, required = true)]
    purpose: Option<Purpose>,
    #[schema(rename = "expires_after[anchor]", schema_with = ExpiresAfter::anchor_schema)]
    anchor: Option<String>,
    #[schema(rename = "expires_after[seconds]", schema_with = ExpiresAfter::seconds_schema)]
    seconds: Option<String>,
}

/// Reads the whole form through a [`Guard`], the file part into a spool.
async fn read_form(
    req: &HttpRequest,
    payload: web::Payload,
    limits: &LimitSettings,
) -> Result<NewUpload, ApiError> {
    let (guard, stream) = Guard::wrap(
        payload,
        GuardSettings {
            max_file_bytes: limits.max_upload_bytes,
            idle: Duration::from_secs(limits.upload_idle_timeout_secs),
            total: Duration::from_secs(limits.upload_timeout_secs),
        },
    );
    let mut form = Multipart::new(req.headers(), stream);
    let mut parts = UploadForm::default();
    let mut count = 0;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| guard.explain(malformed(e)))?;
        count += 1;
        if count > MAX_PARTS {
            return Err(ApiError::TooManyParts { max: MAX_PARTS });
        }
        parts.read(limits, &guard, &mut field).await?;
    }
    Ok(NewUpload {
        file: parts.file.ok_or_else(|| Invalid::missing("file"))?,
        purpose: parts.purpose.ok_or_else(|| Invalid::missing("purpose"))?,
        expires_after: parse_expires_after(parts.anchor, parts.seconds)?,
    })
}

impl UploadForm {
    async fn read(
        &mut self,
        limits: &LimitSettings,
        guard: &Guard,
        field: &mut Field,
    ) -> Result<(), ApiError> {
        let name = field
            .content_disposition()
            .and_then(|cd| cd.get_name())
            .unwrap_or_default()
            .to_owned();
        match name.as_str() {
            "file" if self.file.is_some() => {
                return Err(
                    Invalid::new("file", "invalid_value", "Send exactly one 'file' part.").into(),
                )
            }
            "file" => self.file = Some(receive_file(limits, guard, field, self.purpose).await?),
            "purpose" => {
                let raw = read_text(guard, field, "purpose").await?;
                self.purpose = Some(Purpose::parse_upload(&raw)?)
            }
            "expires_after[anchor]" => {
                self.anchor = Some(read_text(guard, field, "expires_after[anchor]").await?)
            }
            "expires_after[seconds]" => {
                self.seconds = Some(read_text(guard, field, "expires_after[seconds]").await?)
            }
            // Unknown parts are ignored, as JSON bodies ignore unknown fields (their bytes
            // count as form overhead).
            _ => {
                while field
                    .try_next()
                    .await
                    .map_err(|e| guard.explain(malformed(e)))?
                    .is_some()
                {}
            }
        }
        Ok(())
    }
}

fn parse_expires_after(
    anchor: Option<String>,
    seconds: Option<String>,
) -> Result<Option<ExpiresAfter>, Invalid> {
    match (anchor, seconds) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Invalid::missing("expires_after[anchor]")),
        (Some(_), None) => Err(Invalid::missing("expires_after[seconds]")),
        (Some(anchor), Some(seconds)) => {
            let seconds: i64 = seconds.parse().map_err(|_| {
                Invalid::wrong_type("expires_after[seconds]", "an integer number of seconds")
            })?;
            ExpiresAfter::new("expires_after", &anchor, seconds).map(Some)
        }
    }
}

fn parse_file_id(raw: &str) -> Result<FileId, ApiError> {
    let id =
        FileId::parse("file_id", raw).map_err(|_| ApiError::FileNotFound { id: raw.to_owned() })?;
    record_path_id("file_id", id.as_str());
    Ok(id)
}

#[utoipa::path(
    operation_id = "retrieveFile",
    tag = "files",
    summary = "A file's object",
    params(("file_id" = String, Path)),
    responses(
        (status = 200, description = "The file", body = FileObject),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/files/{file_id}")]
async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_file_id(&path)?;
    let file = files::get(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(FileObject::new(&file)))
}

/// Streams the content from the database one chunk at a time.
#[utoipa::path(
    operation_id = "downloadFile",
    tag = "files",
    summary = "A file's content",
    params(("file_id" = String, Path)),
    responses(
        (status = 200, description = "The raw content", body = inline(String),
            content_type = "application/octet-stream"),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/files/{file_id}/content")]
async fn content(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_file_id(&path)?;
    let (file, chunks) = files::content(&state.content, &project, &id).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .no_chunking(file.bytes as u64)
        .streaming(chunks))
}

#[utoipa::path(
    operation_id = "deleteFile",
    tag = "files",
    summary = "Delete a file",
    params(("file_id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = DeletedFile),
        (status = 404, response = ErrorResponse),
    )
)]
#[delete("/files/{file_id}")]
async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_file_id(&path)?;
    files::delete(&state.content, &project, &id).await?;
    Ok(HttpResponse::Ok().json(DeletedFile {
        id: id.as_str().to_owned(),
        object: FileTag::Tag,
        deleted: true,
    }))
}

#[derive(Deserialize)]
struct ListParams {
    purpose: Option<String>,
    order: Option<String>,
    #[serde(flatten)]
    page: PageParams,
}

/// `purpose` and `order`, the parameters only the files list has, for the OpenAPI document.
struct FileFilters;

impl utoipa::IntoParams for FileFilters {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let param = |name: &str, schema: RefOr<Schema>| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(schema))
                .build()
        };
        let mut order = string_enum(ORDERS);
        order.default = Some(DEFAULT_ORDER.into());
        vec![
            param("purpose", Purpose::schema()),
            param("order", order.into()),
        ]
    }
}

/// The orders a listing takes.
const ORDERS: [&str; 2] = ["asc", "desc"];
const DEFAULT_ORDER: &str = "desc";
const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 10_000;

#[utoipa::path(
    operation_id = "listFiles",
    tag = "files",
    summary = "The project's files",
    params(FileFilters, PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of files", body = FileList),
        (status = 400, response = ErrorResponse),
    )
)]
#[get("/files")]
async fn list(
    query: web::Query<ListParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = (query.page).parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| FileId::parse("after", raw))?;
    let order = match query.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => return Err(Invalid::unsupported("order", other, ORDERS).into()),
    };
    let purpose = query
        .purpose
        .as_deref()
        .map(Purpose::parse_filter)
        .transpose()?;
    let listing = ListQuery {
        purpose,
        after: page.after.as_ref(),
        limit: page.limit,
        order,
    };
    let found = files::list(&state.pool, &project, listing).await?;
    let data = found.items.iter().map(FileObject::new).collect();
    Ok(HttpResponse::Ok().json(FileList::new(data, found.has_more)))
}

tag!(FileTag = "file");
tag!(FileStatus = "processed");

/// The OpenAI File object. Content is usable as soon as the upload returns, hence `processed`.
#[derive(Serialize, ToSchema)]
#[schema(as = File)]
pub(super) struct FileObject {
    id: String,
    #[schema(inline)]
    object: FileTag,
    #[schema(minimum = 0)]
    bytes: i64,
    created_at: i64,
    #[schema(required = true)]
    expires_at: Option<i64>,
    filename: String,
    purpose: Purpose,
    #[schema(inline)]
    status: FileStatus,
    /// Always `null` (deprecated by OpenAI).
    #[schema(required = true)]
    status_details: Option<String>,
}

impl FileObject {
    pub(super) fn new(f: &FileRecord) -> Self {
        Self {
            id: f.id.as_str().to_owned(),
            object: FileTag::Tag,
            bytes: f.bytes,
            created_at: f.created_at,
            expires_at: f.expires_at,
            filename: f.filename.clone(),
            purpose: f.purpose,
            status: FileStatus::Tag,
            status_details: None,
        }
    }
}

list_type!(FileList, FileObject, "A page of files.");

#[derive(Serialize, ToSchema)]
pub(super) struct DeletedFile {
    id: String,
    #[schema(inline)]
    object: FileTag,
    deleted: bool,
}
