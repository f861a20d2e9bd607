use sha2::{Digest, Sha256};

/// An API key: `obk_<prefix id>_<secret>`. The prefix (`obk_<prefix id>`) is not secret: it
/// names the key in listings and finds its row; the whole key is only ever stored hashed.
pub struct ApiKey;

/// A presented key, split and hashed, ready to check against the stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub prefix: String,
    pub hash: [u8; 32],
}

pub struct NewKey {
    /// Shown once, to the operator who created it.
    pub secret: String,
    pub prefix: String,
    pub hash: [u8; 32],
}

const SCHEME: &str = "obk_";

impl ApiKey {
    pub fn generate() -> NewKey {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret_part = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let prefix = format!("{SCHEME}{}", &id[..12]);
        let secret = format!("{prefix}_{secret_part}");
        let hash = hash(&secret);
        NewKey {
            secret,
            prefix,
            hash,
        }
    }

    /// `None` for anything that is not shaped like one of our keys.
    pub fn parse(presented: &str) -> Option<PresentedKey> {
        let rest = presented.strip_prefix(SCHEME)?;
        let (id, secret) = rest.split_once('_')?;
        let well_formed = id.len() == 12
            && secret.len() == 64
            && id
                .bytes()
                .chain(secret.bytes())
                .all(|b| b.is_ascii_hexdigit());
        well_formed.then(|| PresentedKey {
            prefix: format!("{SCHEME}{id}"),
            hash: hash(presented),
        })
    }

    /// For error messages: enough to recognise a key, never enough to use it.
    pub fn mask(presented: &str) -> String {
        let shown: String = presented.chars().take(8).collect();
        let tail: String = presented
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if presented.chars().count() <= 12 {
            "****".to_owned()
        } else {
            format!("{shown}****{tail}")
        }
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares without an early exit, so the time taken says nothing about where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_prefix_and_hash() {
        let k = ApiKey::generate();
        let p = ApiKey::parse(&k.secret).unwrap();
        assert_eq!(p.prefix, k.prefix);
        assert_eq!(p.hash, k.hash);
        assert!(k.secret.starts_with(&k.prefix));
        assert_ne!(ApiKey::generate().secret, k.secret);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let k = ApiKey::generate().secret;
        for bad in [
            "",
            "sk-abc",
            "obk_",
            &k[..k.len() - 1],
            &format!("{k}0"),
            &k.replace('_', "-"),
        ] {
            assert_eq!(ApiKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn masking_hides_the_secret() {
        let k = ApiKey::generate().secret;
        let m = ApiKey::mask(&k);
        // Recognisable by its ends, while the middle (the secret part) never shows.
        assert_eq!(m, format!("{}****{}", &k[..8], &k[k.len() - 4..]));
        assert!(!m.contains(&k[8..k.len() - 4]));
        assert_eq!(ApiKey::mask("ob-1234567890"), "ob-12345****7890");
        assert_eq!(ApiKey::mask("exactly12chr"), "****");
        assert_eq!(ApiKey::mask("short"), "****");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
