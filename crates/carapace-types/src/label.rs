use std::fmt;

/// Where a piece of data came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Typed by the owner.
    Owner,
    /// Written by the model.
    Model,
    /// A file in the workspace that the agent did not write (the user put it there).
    UserFile,
    /// A file in the workspace that the agent wrote.
    AgentFile,
    /// Fetched from the web.
    Web,
    /// Output of a named tool.
    Tool(String),
    /// A named contact on a messaging channel (not the owner).
    Contact(String),
    /// A named plugin.
    Plugin(String),
}

impl Source {
    /// Stable name for storage and display, like `tool:list_dir`.
    pub fn as_string(&self) -> String {
        match self {
            Source::Owner => "owner".into(),
            Source::Model => "model".into(),
            Source::UserFile => "user_file".into(),
            Source::AgentFile => "agent_file".into(),
            Source::Web => "web".into(),
            Source::Tool(name) => format!("tool:{name}"),
            Source::Contact(name) => format!("contact:{name}"),
            Source::Plugin(name) => format!("plugin:{name}"),
        }
    }

    /// Parses the name produced by [`Source::as_string`].
    pub fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "owner" => Source::Owner,
            "model" => Source::Model,
            "user_file" => Source::UserFile,
            "agent_file" => Source::AgentFile,
            "web" => Source::Web,
            _ => {
                if let Some(name) = s.strip_prefix("contact:") {
                    Source::Contact(name.to_string())
                } else if let Some(name) = s.strip_prefix("plugin:") {
                    Source::Plugin(name.to_string())
                } else {
                    Source::Tool(s.strip_prefix("tool:")?.to_string())
                }
            }
        })
    }
}

/// Whether data may be trusted to carry instructions. Ordered: joining takes the worse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Integrity {
    /// From the owner or derived only from trusted data.
    Trusted,
    /// May contain instructions from a third party.
    Untrusted,
}

/// How confidential data is. Ordered: joining takes the higher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Confidentiality {
    /// May be shown to anyone.
    Public,
    /// The owner's private data.
    Private,
    /// A credential or equally sensitive value.
    Secret,
}

/// The security label of a piece of data or of a whole session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// Integrity: can it be trusted.
    pub integrity: Integrity,
    /// Confidentiality: who may see it.
    pub confidentiality: Confidentiality,
}

impl Label {
    /// The label of a fresh session and of text the owner typed.
    pub const TRUSTED_PUBLIC: Label = Label {
        integrity: Integrity::Trusted,
        confidentiality: Confidentiality::Public,
    };

    /// The least upper bound: the worse integrity and the higher confidentiality.
    #[must_use]
    pub fn join(self, other: Label) -> Label {
        Label {
            integrity: self.integrity.max(other.integrity),
            confidentiality: self.confidentiality.max(other.confidentiality),
        }
    }

    /// True when `self` is at least as restrictive as `other` on both axes.
    pub fn dominates(self, other: Label) -> bool {
        self.integrity >= other.integrity && self.confidentiality >= other.confidentiality
    }
}

impl Integrity {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Trusted => "trusted",
            Integrity::Untrusted => "untrusted",
        }
    }

    /// Parses the name produced by [`Integrity::as_str`].
    pub fn parse(s: &str) -> Option<Integrity> {
        match s {
            "trusted" => Some(Integrity::Trusted),
            "untrusted" => Some(Integrity::Untrusted),
            _ => None,
        }
    }
}

impl Confidentiality {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Confidentiality::Public => "public",
            Confidentiality::Private => "private",
            Confidentiality::Secret => "secret",
        }
    }

    /// Parses the name produced by [`Confidentiality::as_str`].
    pub fn parse(s: &str) -> Option<Confidentiality> {
        match s {
            "public" => Some(Confidentiality::Public),
            "private" => Some(Confidentiality::Private),
            "secret" => Some(Confidentiality::Secret),
            _ => None,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.integrity.as_str(),
            self.confidentiality.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_takes_the_worse_of_each_axis_and_never_lowers() {
        let web = Label {
            integrity: Integrity::Untrusted,
            confidentiality: Confidentiality::Public,
        };
        let private = Label {
            integrity: Integrity::Trusted,
            confidentiality: Confidentiality::Private,
        };
        let joined = web.join(private);
        assert_eq!(joined.integrity, Integrity::Untrusted);
        assert_eq!(joined.confidentiality, Confidentiality::Private);
        assert!(joined.dominates(web) && joined.dominates(private));
        assert_eq!(joined.join(Label::TRUSTED_PUBLIC), joined);
    }

    #[test]
    fn source_names_round_trip() {
        for s in [
            Source::Owner,
            Source::Web,
            Source::AgentFile,
            Source::Tool("list_dir".into()),
            Source::Contact("+14155550100".into()),
            Source::Plugin("weather".into()),
        ] {
            assert_eq!(Source::parse(&s.as_string()), Some(s));
        }
        assert_eq!(Source::parse("nonsense"), None);
    }
}
