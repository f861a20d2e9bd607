use std::fmt;

use super::Invalid;

/// Ids are opaque to clients, so a lookup accepts any reasonable string (a wrong one is simply
/// not found); only ids we mint carry our prefixes.
const MAX_ID_LEN: usize = 256;

/// The schema of an id a request names (such as `input_file_id`).
pub fn id_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .build()
}

fn parse_id(param: &str, raw: &str) -> Result<String, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(
            param,
            "invalid_value",
            format!("'{param}' must not be empty."),
        ));
    }
    if raw.len() > MAX_ID_LEN || raw.chars().any(char::is_control) {
        return Err(Invalid::new(
            param,
            "invalid_value",
            format!(
                "Invalid '{param}': expected an id of at most {MAX_ID_LEN} printable characters."
            ),
        ));
    }
    Ok(raw.to_owned())
}

fn mint(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        stored_as_text!($name, |raw| $name::parse("id", raw).map_err(|e| e.message));

        impl $name {
            pub fn generate() -> Self {
                Self(mint($prefix))
            }

            pub fn parse(param: &str, raw: &str) -> Result<Self, Invalid> {
                parse_id(param, raw).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(BatchId, "batch_");
id_type!(FileId, "file-");
id_type!(WebhookEndpointId, "we_");
id_type!(ServiceAccountId, "svc_acct_");
id_type!(UploadId, "upload_");
id_type!(UploadPartId, "part_");
// A key's public id (`key_<12 hex>`): its prefix's, under the name OpenAI's Admin API uses
// (the database derives it from the prefix).
id_type!(ApiKeyId, "key_");

impl ApiKeyId {
    /// The id of the key with this prefix (`obk_<12 hex>` → `key_<12 hex>`), as the database
    /// derives it.
    pub fn of_prefix(prefix: &str) -> Self {
        Self(format!("key_{}", prefix.get(4..).unwrap_or_default()))
    }
}

/// A tenant. Not client-supplied: it comes from authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProjectId(String);

impl ProjectId {
    /// The project every request belongs to while authentication is off.
    pub fn built_in() -> Self {
        Self("proj_default".to_owned())
    }

    /// A project id read back from the database.
    pub fn from_db(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Project ids are never client-supplied: any id the database holds is one.
stored_as_text!(ProjectId, |raw| Ok(ProjectId(raw.to_owned())));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_carry_their_prefix_and_are_unique() {
        let a = BatchId::generate();
        let b = BatchId::generate();
        assert!(a.as_str().starts_with("batch_"));
        assert!(FileId::generate().as_str().starts_with("file-"));
        assert_ne!(a, b);
    }

    #[test]
    fn foreign_ids_are_accepted_but_empty_or_huge_ones_are_not() {
        assert!(FileId::parse("input_file_id", "bogus-id").is_ok());
        assert!(FileId::parse("input_file_id", "").is_err());
        assert!(FileId::parse("input_file_id", &"x".repeat(300)).is_err());
        assert!(FileId::parse("input_file_id", "a\nb").is_err());
    }
}

/// A tenant's name, as an operator gives it to `openbatch keys create --project` or to
/// `POST /v1/organization/projects`: 1 to 128 characters (any text, as OpenAI takes it: shown
/// only as JSON and through the console's text nodes), not all blank, unique, and
/// never the built-in project's name, `default` (any case): while authentication is off every
/// request acts for that project, so a new tenant given that name would read all the anonymous
/// data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName(String);

pub const BUILT_IN_PROJECT_NAME: &str = "default";

impl ProjectName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() || name.chars().count() > 128 {
            return Err("a project name must be 1 to 128 characters".to_owned());
        }
        if name.eq_ignore_ascii_case(BUILT_IN_PROJECT_NAME) {
            return Err(format!(
                "the project name '{BUILT_IN_PROJECT_NAME}' is reserved for the built-in project \
                 that holds what was created with authentication off; pick another name"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// As a request's `name` gives it.
    pub fn parse_param(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw).map_err(|message| {
            Invalid::new(
                "name",
                "invalid_value",
                format!("Invalid 'name': {message}."),
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod project_name_tests {
    use super::*;

    #[test]
    fn the_built_in_name_is_reserved() {
        for bad in [
            "default",
            " Default ",
            "DEFAULT",
            "",
            "   ",
            &"x".repeat(129),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ProjectName::parse(" team-a ").unwrap().as_str(), "team-a");
        assert!(ProjectName::parse("default-2").is_ok());
    }
}
