//! Authentication (client certificates, static bearer tokens) and the authorizer trait
//! (implemented by [`super::rbac::ClusterAuthorizer`]). Anonymous requests are rejected with 401.

use std::collections::HashMap;
use std::path::Path;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// The identity a verified TLS client certificate carried (set per connection).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<UserInfo>);

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
}

/// Static tokens, in kube-apiserver's `--token-file` CSV format:
/// `token,user,uid,"group1,group2"` (groups optional).
#[derive(Debug, Default, Clone)]
pub struct TokenFile {
    tokens: HashMap<String, UserInfo>,
}

/// Splits one CSV line, honouring double quotes (groups are one quoted field).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| TokenFileError::Parse {
            path: p,
            line,
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut tokens = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line).map_err(|r| (i + 1, r))?;
            if f.len() < 3 {
                return Err((i + 1, "want token,user,uid[,\"groups\"]".into()));
            }
            let token = f[0].trim().to_string();
            let name = f[1].trim().to_string();
            if token.is_empty() || name.is_empty() {
                return Err((i + 1, "empty token or user".into()));
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            if tokens
                .insert(
                    token,
                    UserInfo {
                        name,
                        uid: f[2].trim().to_string(),
                        groups,
                    },
                )
                .is_some()
            {
                return Err((i + 1, "duplicate token".into()));
            }
        }
        Ok(TokenFile { tokens })
    }

    pub fn lookup(&self, token: &str) -> Option<&UserInfo> {
        self.tokens.get(token)
    }
}

/// Finds the user of a request: the client certificate first, then `Authorization: Bearer`.
/// Adds `system:authenticated` as kube-apiserver does.
pub fn authenticate(
    peer: Option<&PeerIdentity>,
    authorization: Option<&str>,
    tokens: &TokenFile,
) -> Option<UserInfo> {
    let mut user = peer.and_then(|p| p.0.clone()).or_else(|| {
        let value = authorization?.trim();
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        tokens.lookup(token.trim()).cloned()
    })?;
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    Some(user)
}

/// What a request wants to do, for the authorizer.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// Set for non-resource requests (`/version`, `/apis`): the URL path; the resource
    /// fields are then empty.
    pub path: Option<&'a str>,
}

impl<'a> Attributes<'a> {
    /// A non-resource request (`GET /healthz`).
    pub fn non_resource(verb: &'a str, path: &'a str) -> Self {
        Attributes {
            verb,
            group: "",
            resource: "",
            subresource: None,
            namespace: None,
            name: None,
            path: Some(path),
        }
    }
}

/// Decides whether a user may do something.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err(reason)` to deny.
    fn authorize(&self, user: &UserInfo, attrs: &Attributes<'_>) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_quoted_groups_and_rejects_bad_lines() {
        let tf = TokenFile::parse("# c\nabc,alice,1,\"system:masters,dev\"\nxyz,bob,2\n")
            .expect("valid file");
        let a = tf.lookup("abc").expect("alice");
        assert_eq!(a.groups, vec!["system:masters", "dev"]);
        assert!(tf.lookup("xyz").expect("bob").groups.is_empty());
        assert_eq!(TokenFile::parse("a,b\n").map(|_| ()).unwrap_err().0, 1);
        assert!(TokenFile::parse("a,b,c\na,d,e\n").is_err());
        let u = authenticate(None, Some("Bearer abc"), &tf).expect("authenticated");
        assert!(u.groups.contains(&"system:authenticated".to_string()));
        assert!(authenticate(None, Some("Bearer nope"), &tf).is_none());
        assert!(authenticate(None, None, &tf).is_none());
        let bob = authenticate(None, Some("bearer xyz"), &tf).expect("bob");
        assert_eq!(bob.name, "bob");
    }
}
