use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pagination::{list_page, PageParams};
use super::{body, no_such, AppState, Project};
use crate::domain::{ExpiresAfter, FileId, Invalid, ProjectId, Purpose, Utf8Check};
use crate::error::ApiError;
use crate::store::files::{
    self as store, FileRecord, ListQuery, NewFile, Order, Upload, CHUNK_BYTES,
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/files")
            .route(web::post().to(upload))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/files/{file_id}")
            .route(web::get().to(retrieve))
            .route(web::delete().to(delete)),
    )
    .service(web::resource("/files/{file_id}/content").route(web::get().to(content)));
}

const MAX_TEXT_FIELD_BYTES: usize = 1024;
const MAX_FILENAME_CHARS: usize = 255;

fn malformed(e: MultipartError) -> ApiError {
    ApiError::bad_request(format!("Malformed multipart/form-data body: {e}."))
        .with_code("invalid_multipart")
}

/// A small text part such as `purpose`.
async fn read_text(field: &mut Field, name: &str) -> Result<String, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
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

/// The file part, streamed into the database chunk by chunk; memory stays at one chunk.
struct Received {
    upload: Upload,
    filename: String,
    utf8: Utf8Check,
    bytes: u64,
}

async fn receive_file(
    state: &AppState,
    field: &mut Field,
    purpose: Option<Purpose>,
) -> Result<Received, ApiError> {
    let filename = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .unwrap_or("file")
        .to_owned();
    if filename.chars().count() > MAX_FILENAME_CHARS || filename.chars().any(char::is_control) {
        return Err(Invalid::new(
            "file",
            "invalid_value",
            format!("The file name must be at most {MAX_FILENAME_CHARS} printable characters."),
        )
        .into());
    }
    let max = state.limits.max_upload_bytes;
    let mut upload = Upload::begin(&state.pool).await?;
    let mut utf8 = Utf8Check::default();
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    let mut bytes: u64 = 0;
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
        bytes += chunk.len() as u64;
        if bytes > max {
            return Err(ApiError::payload_too_large(format!(
                "File too large: the maximum upload size is {max} bytes."
            ))
            .with_param("file")
            .with_code("file_too_large"));
        }
        utf8.feed(&chunk);
        // Known to be a batch file already: stop at the first bad byte, not after 512 MB.
        if purpose == Some(Purpose::Batch) && utf8.has_failed() {
            return Err(not_jsonl());
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= CHUNK_BYTES {
            upload.write_chunk(&buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        upload.write_chunk(&buf).await?;
    }
    Ok(Received {
        upload,
        filename,
        utf8,
        bytes,
    })
}

fn not_jsonl() -> ApiError {
    Invalid::new(
        "file",
        "invalid_file_format",
        "Invalid file format for Batch API: the file must be UTF-8 encoded JSONL.",
    )
    .into()
}

/// `POST /v1/files`. Parts may come in any order. A `batch` file is checked to be UTF-8 here;
/// its lines are checked as JSON requests when a batch using it is validated.
async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let is_multipart = body::content_type(&req)
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        return Err(ApiError::unsupported_media_type(
            "This endpoint expects a multipart/form-data body with 'file' and 'purpose' parts.",
        ));
    }
    let mut form = Multipart::new(req.headers(), payload);
    let mut purpose: Option<Purpose> = None;
    let mut anchor: Option<String> = None;
    let mut seconds: Option<String> = None;
    let mut received: Option<Received> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(malformed)?;
        let name = field
            .content_disposition()
            .and_then(|cd| cd.get_name())
            .unwrap_or_default()
            .to_owned();
        match name.as_str() {
            "file" if received.is_some() => {
                return Err(
                    Invalid::new("file", "invalid_value", "Send exactly one 'file' part.").into(),
                )
            }
            "file" => received = Some(receive_file(&state, &mut field, purpose).await?),
            "purpose" => {
                purpose = Some(Purpose::parse_upload(
                    &read_text(&mut field, "purpose").await?,
                )?)
            }
            "expires_after[anchor]" => {
                anchor = Some(read_text(&mut field, "expires_after[anchor]").await?)
            }
            "expires_after[seconds]" => {
                seconds = Some(read_text(&mut field, "expires_after[seconds]").await?)
            }
            // Unknown parts are ignored, as JSON bodies ignore unknown fields.
            _ => while field.try_next().await.map_err(malformed)?.is_some() {},
        }
    }
    let received = received.ok_or_else(|| Invalid::missing("file"))?;
    let purpose = purpose.ok_or_else(|| Invalid::missing("purpose"))?;
    let expires_after = parse_expires_after(anchor, seconds)?;
    if received.bytes == 0 {
        return Err(Invalid::new("file", "invalid_value", "The uploaded file is empty.").into());
    }
    if purpose == Purpose::Batch && !received.utf8.is_valid() {
        return Err(not_jsonl());
    }
    let file = received
        .upload
        .commit(NewFile {
            project: &project,
            filename: &received.filename,
            purpose,
            expires_after_seconds: expires_after.map(ExpiresAfter::seconds),
        })
        .await?;
    tracing::Span::current().record("file_id", file.id.as_str());
    tracing::info!(file_id = %file.id, bytes = file.bytes, "file uploaded");
    Ok(HttpResponse::Ok().json(file_object(&file)))
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
    // Recorded only once valid: a raw path segment may hold a decoded newline, which would
    // forge lines in text logs.
    let id = FileId::parse("file_id", raw).map_err(|_| no_such("File", raw, "id"))?;
    tracing::Span::current().record("file_id", id.as_str());
    Ok(id)
}

async fn find(state: &AppState, project: &ProjectId, raw: &str) -> Result<FileRecord, ApiError> {
    let id = parse_file_id(raw)?;
    store::get(&state.pool, project, &id)
        .await?
        .ok_or_else(|| no_such("File", raw, "id"))
}

async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let file = find(&state, &project, &path).await?;
    Ok(HttpResponse::Ok().json(file_object(&file)))
}

/// Streams the content from the database one chunk at a time.
async fn content(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let file = find(&state, &project, &path).await?;
    let pool = state.pool.clone();
    let id = file.id.clone();
    let chunks = futures_util::stream::try_unfold(0_i32, move |idx| {
        let pool = pool.clone();
        let id = id.clone();
        async move {
            let data = store::chunk(&pool, &id, idx).await?;
            Ok::<_, sqlx::Error>(data.map(|d| (Bytes::from(d), idx + 1)))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .no_chunking(file.bytes as u64)
        .streaming(chunks))
}

async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_file_id(&path)?;
    if !store::delete(&state.pool, &project, &id).await? {
        return Err(no_such("File", &path, "id"));
    }
    Ok(HttpResponse::Ok().json(json!({"id": id.as_str(), "object": "file", "deleted": true})))
}

#[derive(Deserialize)]
struct ListParams {
    purpose: Option<String>,
    order: Option<String>,
    #[serde(flatten)]
    page: PageParams,
}

async fn list(
    query: web::Query<ListParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = (query.page).parse(10_000, 10_000, |raw| FileId::parse("after", raw))?;
    let order = match query.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(other) => return Err(Invalid::unsupported("order", other, ["asc", "desc"]).into()),
    };
    let purpose = query
        .purpose
        .as_deref()
        .map(Purpose::parse_filter)
        .transpose()?;
    let found = store::list(
        &state.pool,
        &project,
        ListQuery {
            purpose,
            after: page.after.as_ref(),
            limit: page.limit,
            order,
        },
    )
    .await?
    .ok_or_else(|| query.page.unknown_cursor())?;
    let data = found.files.iter().map(file_object).collect();
    Ok(HttpResponse::Ok().json(list_page(data, found.has_more)))
}

/// The OpenAI File object. Content is usable as soon as the upload returns, hence `processed`.
fn file_object(f: &FileRecord) -> Value {
    json!({
        "id": f.id.as_str(),
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "expires_at": f.expires_at,
        "filename": f.filename,
        "purpose": f.purpose.as_str(),
        "status": "processed",
        "status_details": null,
    })
}
