//! OpenAI's Uploads API (`/v1/uploads`): a file of up to `limits.max_upload_total_bytes` (8 GB)
//! sent in parts of up to 64 MB, as `client.uploads.upload_file_chunked` sends it.

use std::time::Duration;

use actix_multipart::Multipart;
use actix_web::{post, web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::files::{malformed, refuse_form_early, FileObject, MAX_PARTS};
use super::spool::{Guard, GuardSettings};
use super::{body, record_path_id, AppState, Project};
use crate::domain::{
    parse_md5, ExpiresAfter, Invalid, NewUpload, Purpose, UploadId, UploadStatus, MAX_PART_BYTES,
};
use crate::error::{ApiError, ErrorResponse};
use crate::services::files::FileRecord;
use crate::services::uploads::{
    self as service, Completion, IncomingPart, PartRecord, UploadRecord,
};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(add_part)
        .service(complete)
        .service(cancel);
}

tag!(UploadTag = "upload");
tag!(PartTag = "upload.part");

#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pending,
    Completed,
    Cancelled,
    Expired,
}

/// The Upload object.
#[derive(Serialize, ToSchema)]
#[schema(as = Upload)]
struct UploadObject {
    id: String,
    #[schema(inline)]
    object: UploadTag,
    /// What the upload was created for: its parts hold exactly this many bytes on completion.
    bytes: i64,
    created_at: i64,
    filename: String,
    purpose: Purpose,
    #[schema(inline)]
    status: Status,
    /// When an unfinished upload expires (an hour after its creation).
    expires_at: i64,
    /// The file it became, once completed.
    #[schema(required = true)]
    file: Option<FileObject>,
}

impl UploadObject {
    fn new(u: &UploadRecord, file: Option<&FileRecord>) -> Self {
        Self {
            id: u.id.to_string(),
            object: UploadTag::Tag,
            bytes: u.bytes,
            created_at: u.created_at,
            filename: u.filename.clone(),
            purpose: u.purpose,
            status: match u.status {
                UploadStatus::Pending => Status::Pending,
                UploadStatus::Completed => Status::Completed,
                UploadStatus::Cancelled => Status::Cancelled,
                UploadStatus::Expired => Status::Expired,
            },
            expires_at: u.expires_at,
            file: file.map(FileObject::new),
        }
    }
}

/// The UploadPart object.
#[derive(Serialize, ToSchema)]
#[schema(as = UploadPart)]
struct PartObject {
    id: String,
    #[schema(inline)]
    object: PartTag,
    created_at: i64,
    upload_id: String,
}

impl PartObject {
    fn new(p: &PartRecord) -> Self {
        Self {
            id: p.id.to_string(),
            object: PartTag::Tag,
            created_at: p.created_at,
            upload_id: p.upload_id.to_string(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct ExpiresAfterBody {
    #[schema(schema_with = ExpiresAfter::anchor_schema)]
    anchor: String,
    #[schema(schema_with = ExpiresAfter::seconds_schema)]
    seconds: i64,
}

/// `POST /v1/uploads`.
#[derive(Deserialize, ToSchema)]
#[schema(as = CreateUploadRequest)]
struct CreateBody {
    #[schema(required = true, min_length = 1, max_length = 255)]
    filename: Option<String>,
    #[schema(schema_with = Purpose::uploadable_schema, required = true)]
    purpose: Option<String>,
    /// The whole file's size: its parts must add up to it.
    #[schema(required = true, minimum = 1)]
    bytes: Option<i64>,
    #[schema(required = true, min_length = 1, max_length = 255)]
    mime_type: Option<String>,
    /// When the file the upload becomes expires.
    expires_after: Option<ExpiresAfterBody>,
}

impl CreateBody {
    fn parse(self, max_bytes: u64) -> Result<NewUpload, Invalid> {
        let expires_after = self
            .expires_after
            .map(|e| ExpiresAfter::new("expires_after", &e.anchor, e.seconds))
            .transpose()?;
        NewUpload::parse(
            &self.filename.ok_or_else(|| Invalid::missing("filename"))?,
            &self.purpose.ok_or_else(|| Invalid::missing("purpose"))?,
            self.bytes.ok_or_else(|| Invalid::missing("bytes"))?,
            &self
                .mime_type
                .ok_or_else(|| Invalid::missing("mime_type"))?,
            expires_after,
            max_bytes,
        )
    }
}

#[utoipa::path(
    operation_id = "createUpload",
    tag = "uploads",
    summary = "Start an upload of a file in parts",
    description = "The upload takes parts for an hour; then it expires and its parts are removed.",
    request_body = CreateBody,
    responses(
        (status = 200, description = "The upload, pending", body = UploadObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/uploads")]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let body: CreateBody = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let new = body.parse(state.limits.max_upload_total_bytes)?;
    let upload = service::create(&state.pool, &state.limits, &project, &new).await?;
    record_path_id("upload_id", upload.id.as_str());
    Ok(HttpResponse::Ok().json(UploadObject::new(&upload, None)))
}

fn upload_id(raw: &str) -> Result<UploadId, ApiError> {
    let id = UploadId::parse("upload_id", raw)
        .map_err(|_| ApiError::UploadNotFound { id: raw.to_owned() })?;
    record_path_id("upload_id", id.as_str());
    Ok(id)
}

/// `POST /v1/uploads/{upload_id}/parts`: a form with one `data` part.
#[derive(ToSchema)]
#[schema(as = AddUploadPartRequest)]
#[allow(dead_code)] // the document describes the form from it
struct PartForm {
    /// At most 64 MB.
    #[schema(value_type = String, format = Binary, required = true)]
    data: Vec<u8>,
}

#[utoipa::path(
    operation_id = "addUploadPart",
    tag = "uploads",
    summary = "Add a part to an upload",
    description = "Parts may arrive in any order, and at once; their order is given on completion.",
    params(("upload_id" = String, Path)),
    request_body(content = PartForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The stored part", body = PartObject),
        (status = 400, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 408, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/uploads/{upload_id}/parts")]
async fn add_part(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = upload_id(&path)?;
    let too_large = ApiError::PartTooLarge {
        max: MAX_PART_BYTES,
    };
    refuse_form_early(&req, "a 'data' part", MAX_PART_BYTES, too_large)?;
    let upload = service::pending(&state.pool, &project, &id).await?;
    let _slot = state
        .uploads
        .take(&project)
        .map_err(ApiError::TooManyUploads)?;
    let part = read_part(&req, payload, &state).await?;
    let part = service::add_part(&state.content, &state.limits, &project, &upload, part).await?;
    tracing::info!(upload_id = %id, part_id = %part.id, "upload part stored");
    Ok(HttpResponse::Ok().json(PartObject::new(&part)))
}

/// Spools the form's `data` part through a [`Guard`]; other parts are ignored.
async fn read_part(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<IncomingPart, ApiError> {
    let limits = &state.limits;
    let (guard, stream) = Guard::wrap(
        payload,
        GuardSettings {
            max_file_bytes: MAX_PART_BYTES,
            idle: Duration::from_secs(limits.upload_idle_timeout_secs),
            total: Duration::from_secs(limits.upload_timeout_secs),
        },
    );
    let explain = |e| match guard.explain(malformed(e)) {
        ApiError::FileTooLarge { max } => ApiError::PartTooLarge { max },
        other => other,
    };
    let mut form = Multipart::new(req.headers(), stream);
    let mut data = None;
    let mut count = 0;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(explain)?;
        count += 1;
        if count > MAX_PARTS {
            return Err(ApiError::TooManyParts { max: MAX_PARTS });
        }
        let name = field
            .content_disposition()
            .and_then(|cd| cd.get_name())
            .unwrap_or_default();
        if name == "data" && data.is_none() {
            let mut part = IncomingPart::start(limits).await?;
            guard.set_in_file(true);
            while let Some(chunk) = field.next().await {
                part.write(&chunk.map_err(explain)?).await?;
            }
            guard.set_in_file(false);
            data = Some(part);
        } else {
            while field.try_next().await.map_err(explain)?.is_some() {}
        }
    }
    data.ok_or_else(|| Invalid::missing("data").into())
}

/// `POST /v1/uploads/{upload_id}/complete`.
#[derive(Deserialize, ToSchema)]
#[schema(as = CompleteUploadRequest)]
struct CompleteBody {
    /// The parts, in the order their bytes make the file.
    #[schema(required = true)]
    part_ids: Option<Vec<String>>,
    /// The whole file's MD5: 32 hexadecimal digits, or the 16 bytes in base64.
    md5: Option<String>,
}

#[utoipa::path(
    operation_id = "completeUpload",
    tag = "uploads",
    summary = "Complete an upload into a file",
    description = "The parts named must be the upload's and hold exactly its `bytes`; parts not \
                   named are removed.",
    params(("upload_id" = String, Path)),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The upload, completed, with its file", body = UploadObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/uploads/{upload_id}/complete")]
async fn complete(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = upload_id(&path)?;
    let body: CompleteBody = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let completion = Completion {
        part_ids: body.part_ids.ok_or_else(|| Invalid::missing("part_ids"))?,
        md5: body.md5.as_deref().map(parse_md5).transpose()?,
    };
    let (upload, file) =
        service::complete(&state.content, &state.limits, &project, &id, &completion).await?;
    tracing::info!(upload_id = %id, file_id = %file.id, bytes = file.bytes, "upload completed");
    Ok(HttpResponse::Ok().json(UploadObject::new(&upload, Some(&file))))
}

#[utoipa::path(
    operation_id = "cancelUpload",
    tag = "uploads",
    summary = "Cancel an upload",
    description = "Its parts are removed; it takes no more.",
    params(("upload_id" = String, Path)),
    responses(
        (status = 200, description = "The upload, cancelled", body = UploadObject),
        (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse),
    )
)]
#[post("/uploads/{upload_id}/cancel")]
async fn cancel(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = upload_id(&path)?;
    let upload = service::cancel(&state.content, &project, &id).await?;
    Ok(HttpResponse::Ok().json(UploadObject::new(&upload, None)))
}
