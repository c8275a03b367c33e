//! The two event types the API knows, so a recorder cannot write a third by typo.

use std::fmt;

/// An Event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Things going as expected.
    Normal,
    /// Something a user may need to act on.
    Warning,
}

impl EventType {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }

    /// The type an Event's `type` field names, if it is one of the two.
    #[must_use]
    pub fn from_field(field: &str) -> Option<Self> {
        match field {
            "Normal" => Some(Self::Normal),
            "Warning" => Some(Self::Warning),
            _ => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_round_trips() {
        for t in [EventType::Normal, EventType::Warning] {
            assert_eq!(EventType::from_field(t.as_str()), Some(t));
        }
        assert_eq!(EventType::from_field("warning"), None);
    }
}
