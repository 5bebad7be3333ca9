//! Principals (`name@member-domain`) and the roles a certificate can carry.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrincipalError {
    #[error("'{0}' is not a principal: expected NAME@DOMAIN, e.g. node-01@alice.collective.local")]
    Malformed(String),
    #[error("'{0}' is not a valid name: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'")]
    BadName(String),
    #[error("'{0}' is not a valid domain: use dot-separated names like alice.collective.local")]
    BadDomain(String),
    #[error("unknown role '{0}': expected coordinator, node or client")]
    BadRole(String),
}

/// What a certificate holder may do. Carried in the certificate and checked on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Node,
    Client,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Node => "node",
            Role::Client => "client",
        }
    }

    /// Whether certificates of this role also serve (and so need a DNS name).
    pub fn is_server(&self) -> bool {
        matches!(self, Role::Coordinator | Role::Node)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coordinator" => Ok(Role::Coordinator),
            "node" => Ok(Role::Node),
            "client" => Ok(Role::Client),
            other => Err(PrincipalError::BadRole(other.to_string())),
        }
    }
}

/// Checks a principal's local name or one DNS label.
pub fn validate_name(name: &str) -> Result<(), PrincipalError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PrincipalError::BadName(name.to_string()))
    }
}

fn validate_domain(domain: &str) -> Result<(), PrincipalError> {
    if domain.len() > 200 || !domain.contains('.') {
        return Err(PrincipalError::BadDomain(domain.to_string()));
    }
    for label in domain.split('.') {
        validate_name(label).map_err(|_| PrincipalError::BadDomain(domain.to_string()))?;
    }
    Ok(())
}

/// Anything with a certificate: `name@member-domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub name: String,
    pub domain: String,
}

impl Principal {
    pub fn new(name: &str, domain: &str) -> Result<Self, PrincipalError> {
        validate_name(name)?;
        validate_domain(domain)?;
        Ok(Principal {
            name: name.to_string(),
            domain: domain.to_string(),
        })
    }

    /// The DNS name a server principal's certificate carries: `name.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}.{}", self.name, self.domain)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.domain)
    }
}

impl FromStr for Principal {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, domain) = s.split_once('@').ok_or_else(|| PrincipalError::Malformed(s.to_string()))?;
        Principal::new(name, domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_principals() {
        let p: Principal = "node-01@alice.collective.local".parse().unwrap();
        assert_eq!(p.name, "node-01");
        assert_eq!(p.dns_name(), "node-01.alice.collective.local");
        assert_eq!(p.to_string(), "node-01@alice.collective.local");
    }

    #[test]
    fn rejects_bad_principals() {
        assert!("nodomain".parse::<Principal>().is_err());
        assert!("Node@alice.collective.local".parse::<Principal>().is_err());
        assert!("-x@alice.collective.local".parse::<Principal>().is_err());
        assert!("x@local".parse::<Principal>().is_err());
        assert!("x@a..b".parse::<Principal>().is_err());
        assert!("wizard".parse::<Role>().is_err());
    }
}
