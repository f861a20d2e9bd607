use super::Invalid;

/// The inference routes a batch may target.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
pub enum Endpoint {
    #[strum(serialize = "/v1/responses")]
    #[serde(rename = "/v1/responses")]
    Responses,
    #[strum(serialize = "/v1/chat/completions")]
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    #[strum(serialize = "/v1/embeddings")]
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    #[strum(serialize = "/v1/completions")]
    #[serde(rename = "/v1/completions")]
    Completions,
    #[strum(serialize = "/v1/moderations")]
    #[serde(rename = "/v1/moderations")]
    Moderations,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Responses,
        Endpoint::ChatCompletions,
        Endpoint::Embeddings,
        Endpoint::Completions,
        Endpoint::Moderations,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        super::spelled(Self::ALL, raw)
            .ok_or_else(|| Invalid::unsupported("endpoint", raw, Self::ALL.map(Self::as_str)))
    }
}

impl TryFrom<String> for Endpoint {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

/// OpenAI accepts only a 24-hour window.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
pub enum CompletionWindow {
    #[strum(serialize = "1h")]
    #[serde(rename = "1h")]
    Hour1,
    #[strum(serialize = "24h")]
    #[serde(rename = "24h")]
    Hours24,
    #[strum(serialize = "7d")]
    #[serde(rename = "7d")]
    Days7,
}

impl CompletionWindow {
    pub const ALL: [CompletionWindow; 3] = [
        CompletionWindow::Hour1,
        CompletionWindow::Hours24,
        CompletionWindow::Days7,
    ];

    /// A window among those a server accepts (`batches.completion_windows`).
    pub fn parse_among(raw: &str, accepted: &[CompletionWindow]) -> Result<Self, Invalid> {
        super::spelled(accepted.iter().copied(), raw).ok_or_else(|| {
            Invalid::unsupported(
                "completion_window",
                raw,
                accepted.iter().map(|w| w.as_str()),
            )
        })
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        super::spelled(Self::ALL, raw).ok_or_else(|| {
            Invalid::unsupported("completion_window", raw, Self::ALL.map(Self::as_str))
        })
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn seconds(self) -> i64 {
        match self {
            Self::Hour1 => 3600,
            Self::Hours24 => 24 * 3600,
            Self::Days7 => 7 * 24 * 3600,
        }
    }
}

/// A running batch's pace against its deadline: whether, at the rate its lines have finished
/// since it started running, the rest would not finish before it expires. A batch with nothing
/// finished is behind once a twentieth of its window (and at least a minute) has gone by.
pub fn behind_schedule(now: i64, started: i64, expires_at: i64, total: i64, done: i64) -> bool {
    if done >= total {
        return false;
    }
    let (elapsed, left) = (now - started, expires_at - now);
    if left <= 0 {
        return true;
    }
    if done <= 0 {
        return elapsed >= ((expires_at - started) / 20).max(60);
    }
    // (total - done) lines at done/elapsed lines a second.
    i128::from(total - done) * i128::from(elapsed) > i128::from(left) * i128::from(done)
}

impl TryFrom<String> for CompletionWindow {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    Validating,
    Failed,
    InProgress,
    Finalizing,
    Completed,
    Expired,
    Cancelling,
    Cancelled,
}

/// What a cancel request does to a batch in a given status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDecision {
    /// Move to `cancelling`; the worker finishes the job.
    Begin,
    /// Already cancelling or cancelled: answer with the batch unchanged.
    AlreadyDone,
    /// Too late: the batch has ended or is writing its results.
    Refuse,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }

    /// The legal status changes. Every UPDATE of `status` is guarded by the `from` side in SQL,
    /// so two replicas racing for one transition cannot both win.
    pub fn can_become(self, next: BatchStatus) -> bool {
        use BatchStatus::*;
        matches!(
            (self, next),
            (Validating, InProgress | Failed | Cancelling | Expired)
                | (InProgress, Finalizing | Cancelling | Expired)
                | (Finalizing, Completed | Expired | Failed)
                | (Cancelling, Cancelled)
        )
    }

    pub fn cancel_decision(self) -> CancelDecision {
        match self {
            BatchStatus::Cancelling | BatchStatus::Cancelled => CancelDecision::AlreadyDone,
            s if s.can_become(BatchStatus::Cancelling) => CancelDecision::Begin,
            _ => CancelDecision::Refuse,
        }
    }

    /// Statuses from which a cancel starts, for the guarded UPDATE.
    pub fn cancellable() -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|s| s.cancel_decision() == CancelDecision::Begin)
            .map(Self::as_str)
            .collect()
    }

    pub const ALL: [BatchStatus; 8] = [
        BatchStatus::Validating,
        BatchStatus::Failed,
        BatchStatus::InProgress,
        BatchStatus::Finalizing,
        BatchStatus::Completed,
        BatchStatus::Expired,
        BatchStatus::Cancelling,
        BatchStatus::Cancelled,
    ];
}

impl TryFrom<String> for BatchStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        super::spelled(Self::ALL, &s)
            .ok_or_else(|| format!("unknown batch status '{s}' in the database"))
    }
}

/// A status change `can_become` allows: what the store takes to move a batch. Its UPDATE is
/// guarded by `from` in SQL, so two replicas racing for one change cannot both win.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    from: Vec<BatchStatus>,
    to: BatchStatus,
}

impl Transition {
    /// `to` from any of `from`; `None` unless every one of them may become `to`.
    pub fn new(from: &[BatchStatus], to: BatchStatus) -> Option<Self> {
        (!from.is_empty() && from.iter().all(|s| s.can_become(to))).then(|| Self {
            from: from.to_vec(),
            to,
        })
    }

    /// `to` from whichever of `candidates` may become it (none: a change that matches no row).
    pub fn from_any(candidates: &[BatchStatus], to: BatchStatus) -> Self {
        Self {
            from: candidates
                .iter()
                .copied()
                .filter(|s| s.can_become(to))
                .collect(),
            to,
        }
    }

    pub fn from(&self) -> &[BatchStatus] {
        &self.from
    }

    pub fn to(&self) -> BatchStatus {
        self.to
    }

    /// The `from` side as SQL compares it (`status = ANY($n)`).
    pub fn from_text(&self) -> Vec<&'static str> {
        self.from.iter().map(|s| s.as_str()).collect()
    }
}

/// The validated parameters of a batch creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    pub input_file_id: super::FileId,
    pub endpoint: Endpoint,
    pub completion_window: CompletionWindow,
    pub metadata: Option<super::Metadata>,
    pub output_expires_after: Option<super::ExpiresAfter>,
}

impl BatchSpec {
    /// SHA-256 (hex) of the canonical JSON of the parameters: object keys sorted, absent
    /// values as `null`. Two creations with one idempotency key must agree on it.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        // serde_json's default map is ordered, so this text is canonical.
        let canonical = serde_json::json!({
            "completion_window": self.completion_window.as_str(),
            "endpoint": self.endpoint.as_str(),
            "input_file_id": self.input_file_id.as_str(),
            "metadata": self.metadata.as_ref().map(super::Metadata::to_json),
            "output_expires_after": self.output_expires_after.map(|e| serde_json::json!({
                "anchor": "created_at",
                "seconds": e.seconds(),
            })),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

// Read back through the domain parser, so a bad stored value is named in the error.
stored_as_text!(Endpoint, |raw| Endpoint::parse(raw).map_err(|e| e.message));
stored_as_text!(CompletionWindow, |raw| CompletionWindow::parse(raw)
    .map_err(|e| e.message));
stored_as_text!(BatchStatus, |raw| BatchStatus::try_from(raw.to_owned()));

#[cfg(test)]
mod tests {
    use super::*;

    mod endpoint {
        text_enum_tests!(super::Endpoint);
    }
    mod completion_window {
        text_enum_tests!(super::CompletionWindow);
    }
    #[test]
    fn a_batch_is_behind_schedule_when_its_pace_misses_the_deadline() {
        // Started at 0, expires at 3600.
        assert!(
            !behind_schedule(600, 0, 3600, 100, 50),
            "half done in a sixth"
        );
        assert!(
            behind_schedule(3000, 0, 3600, 100, 50),
            "half done with a sixth left"
        );
        assert!(!behind_schedule(3000, 0, 3600, 100, 100), "done");
        assert!(behind_schedule(3600, 0, 3600, 100, 99), "expired");
        assert!(!behind_schedule(100, 0, 3600, 100, 0), "nothing yet, early");
        assert!(
            behind_schedule(200, 0, 3600, 100, 0),
            "nothing after a twentieth"
        );
        assert!(
            !behind_schedule(59, 0, 600, 100, 0),
            "nothing yet, within a minute"
        );
    }

    mod batch_status {
        text_enum_tests!(super::BatchStatus);
    }

    #[test]
    fn endpoints_round_trip_and_unknown_ones_list_the_supported() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::parse(e.as_str()), Ok(e));
        }
        let err = Endpoint::parse("/v1/images").unwrap_err();
        assert_eq!(
            (err.param.as_str(), err.code),
            ("endpoint", "invalid_value")
        );
        assert!(err.message.contains("'/v1/chat/completions'"));
    }

    #[test]
    fn only_24h_window() {
        assert!(CompletionWindow::parse("24h").is_ok());
        assert!(CompletionWindow::parse("48h").is_err());
    }

    #[test]
    fn cancel_rules() {
        use BatchStatus::*;
        assert_eq!(Validating.cancel_decision(), CancelDecision::Begin);
        assert_eq!(InProgress.cancel_decision(), CancelDecision::Begin);
        assert_eq!(Cancelling.cancel_decision(), CancelDecision::AlreadyDone);
        assert_eq!(Cancelled.cancel_decision(), CancelDecision::AlreadyDone);
        for s in [Completed, Failed, Expired, Finalizing] {
            assert_eq!(s.cancel_decision(), CancelDecision::Refuse, "{s:?}");
        }
        assert_eq!(
            BatchStatus::cancellable(),
            vec!["validating", "in_progress"]
        );
    }

    #[test]
    fn terminal_statuses_go_nowhere() {
        for from in BatchStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in BatchStatus::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in BatchStatus::ALL {
            assert_eq!(BatchStatus::try_from(s.as_str().to_owned()), Ok(s));
        }
        assert!(BatchStatus::try_from("done".to_owned()).is_err());
    }

    #[test]
    fn a_transition_holds_only_changes_can_become_allows() {
        use BatchStatus::*;
        let t = Transition::new(&[Validating, Finalizing], Failed).unwrap();
        assert_eq!(
            (t.from_text(), t.to()),
            (vec!["validating", "finalizing"], Failed)
        );
        assert_eq!(Transition::new(&[Validating, Completed], Failed), None);
        assert_eq!(Transition::new(&[], Failed), None);
        let any = Transition::from_any(&BatchStatus::ALL, Completed);
        assert_eq!(any.from(), &[Finalizing]);
    }

    use crate::domain::{ExpiresAfter, FileId, Metadata};
    use serde_json::json;

    fn spec(file: &str, meta: serde_json::Value) -> BatchSpec {
        BatchSpec {
            input_file_id: FileId::parse("input_file_id", file).unwrap(),
            endpoint: Endpoint::ChatCompletions,
            completion_window: CompletionWindow::Hours24,
            metadata: Metadata::from_json(&meta).unwrap(),
            output_expires_after: None,
        }
    }

    #[test]
    fn metadata_order_does_not_change_the_fingerprint() {
        assert_eq!(
            spec("f", json!({"a": "1", "b": "2"})).fingerprint(),
            spec("f", json!({"b": "2", "a": "1"})).fingerprint()
        );
    }

    #[test]
    fn every_parameter_changes_the_fingerprint() {
        let base = spec("f", json!({"a": "1"}));
        let mut variants = vec![
            spec("g", json!({"a": "1"})),
            spec("f", json!({"a": "2"})),
            spec("f", json!(null)),
        ];
        let mut other_endpoint = base.clone();
        other_endpoint.endpoint = Endpoint::Embeddings;
        variants.push(other_endpoint);
        let mut expiring = base.clone();
        expiring.output_expires_after = Some(ExpiresAfter::new("o", "created_at", 3600).unwrap());
        variants.push(expiring);
        for v in variants {
            assert_ne!(base.fingerprint(), v.fingerprint(), "{v:?}");
        }
        assert_eq!(base.fingerprint().len(), 64);
    }
}
