//! What a rule grants or forbids ([`Capability`]) and which way ([`Effect`]).

use serde::Deserialize;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Read,
    Watch,
    Write,
    Rotate,
    Rollback,
    List,
    Status,
    Delete,
    Destroy,
    /// Revoke a dynamic secret's lease (`RevokeLease`).
    Revoke,
}

impl Capability {
    /// Every capability, in policy-file order.
    pub const ALL: [Capability; 10] = [
        Self::Read,
        Self::Watch,
        Self::Write,
        Self::Rotate,
        Self::Rollback,
        Self::List,
        Self::Status,
        Self::Delete,
        Self::Destroy,
        Self::Revoke,
    ];

    /// The name used in policy files and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Watch => "watch",
            Self::Write => "write",
            Self::Rotate => "rotate",
            Self::Rollback => "rollback",
            Self::List => "list",
            Self::Status => "status",
            Self::Delete => "delete",
            Self::Destroy => "destroy",
            Self::Revoke => "revoke",
        }
    }

    /// The capability named `name` in a policy file.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether this capability changes secrets.
    pub fn is_write_side(self) -> bool {
        matches!(
            self,
            Self::Write
                | Self::Rotate
                | Self::Rollback
                | Self::Delete
                | Self::Destroy
                | Self::Revoke
        )
    }

    pub(super) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Whether a rule grants or forbids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}
