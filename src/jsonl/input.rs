//! An input line that validation accepted, as execution reads it back: its id, its model and
//! its body exactly as written.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidLine {
    pub custom_id: String,
    pub model: String,
    /// The request body, as written.
    pub body: String,
}

/// What execution needs of a line that validation accepted, read without building a JSON tree;
/// the body is forwarded exactly as written.
pub fn queued(raw: &[u8]) -> Result<ValidLine, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        custom_id: String,
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        model: String,
    }
    let line: Line = serde_json::from_slice(raw)?;
    let body: Body = serde_json::from_str(line.body.get())?;
    Ok(ValidLine {
        custom_id: line.custom_id,
        model: body.model,
        body: line.body.get().to_owned(),
    })
}
