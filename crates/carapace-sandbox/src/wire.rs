//! What travels between the caller and the init process, over one inherited Unix socket
//! (the channel; never argv or the environment, which other processes can read): first
//! the checked spec as JSON, ended by the caller's half-close, then the init's reports as
//! JSON lines, ended by EOF once every init process has let go of the channel. Private to
//! the crate: the public types are not serialisable.

use serde::{Deserialize, Serialize};

use crate::Feature;

/// The init program's last argument names the channel's descriptor: `--channel-fd=0`
/// (with captured output the channel is stdin) or `--channel-fd=3`.
pub(crate) const CHANNEL_ARG: &str = "--channel-fd=";

/// The version of this wire format. The init program may be another binary than the
/// caller (`cara-sandbox-init` beside `cara`) and so another build: it refuses a spec of
/// another version rather than misread it. Bump it with any change to these types (the
/// `the_wire_format_is_pinned_to_its_version` test fails until then).
pub(crate) const WIRE_VERSION: u32 = 1;

/// The spec after validation: paths are UTF-8, absolute and without `..`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireSpec {
    /// [`WIRE_VERSION`] of the caller.
    pub version: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub binds: Vec<WireBind>,
    /// Host path and inside path of the one Unix socket, if any.
    pub socket: Option<(String, String)>,
    pub limits: WireLimits,
    pub allow_degraded: bool,
    /// The caller, so the init can tell whether it was orphaned before it set its
    /// parent-death signal.
    pub caller_pid: u32,
    /// The cgroup directory to join, if the caller prepared one.
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireBind {
    pub src: String,
    pub dst: String,
    pub writable: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireLimits {
    pub cpu_seconds: u64,
    pub address_space_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
    pub tmp_bytes: u64,
}

/// One line the init processes write to the report pipe. `Started` comes right before
/// the command's execve; a failed execve is followed by an `Error`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Report {
    /// A feature was missing and the spec allowed running without it.
    Degraded { feature: String },
    /// Setup is complete; the command is being executed.
    Started,
    /// Setup failed; the command did not run.
    Error {
        step: String,
        message: String,
        /// Set when the failure is a missing kernel feature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        feature: Option<String>,
    },
}

impl Report {
    /// The report as one JSON line.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        line.push(b'\n');
        line
    }
}

/// What the caller learned from the report pipe.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    pub started: bool,
    pub degraded: Vec<Feature>,
    pub error: Option<crate::SandboxError>,
}

/// Parses the report pipe's contents.
pub(crate) fn parse_reports(bytes: &[u8]) -> Reports {
    let mut reports = Reports::default();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Report>(line) {
            Ok(Report::Degraded { feature }) => {
                if let Ok(f) = feature.parse::<Feature>()
                    && !reports.degraded.contains(&f)
                {
                    reports.degraded.push(f);
                }
            }
            Ok(Report::Started) => reports.started = true,
            Ok(Report::Error {
                step,
                message,
                feature,
            }) => {
                if reports.error.is_some() {
                    continue;
                }
                reports.error = Some(match feature.and_then(|f| f.parse::<Feature>().ok()) {
                    Some(feature) => crate::SandboxError::FeatureMissing {
                        feature,
                        detail: message,
                    },
                    None => crate::SandboxError::Setup { step, message },
                });
            }
            Err(_) => {
                if reports.error.is_none() {
                    reports.error = Some(crate::SandboxError::Setup {
                        step: "report".into(),
                        message: format!(
                            "unreadable report from the init process: {}",
                            String::from_utf8_lossy(line)
                        ),
                    });
                }
            }
        }
    }
    reports.degraded.sort();
    reports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SandboxError;

    #[test]
    fn reports_round_trip() {
        let mut bytes = Report::Degraded {
            feature: "landlock".into(),
        }
        .to_line();
        bytes.extend(
            Report::Error {
                step: "exec".into(),
                message: "no such file".into(),
                feature: None,
            }
            .to_line(),
        );
        let r = parse_reports(&bytes);
        assert_eq!(r.degraded, vec![Feature::Landlock]);
        match r.error {
            Some(SandboxError::Setup { step, message }) => {
                assert_eq!((step.as_str(), message.as_str()), ("exec", "no such file"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_feature_becomes_feature_missing() {
        let bytes = Report::Error {
            step: "namespaces".into(),
            message: "unshare: operation not permitted".into(),
            feature: Some("user-namespace".into()),
        }
        .to_line();
        match parse_reports(&bytes).error {
            Some(SandboxError::FeatureMissing { feature, detail }) => {
                assert_eq!(feature, Feature::UserNamespace);
                assert_eq!(detail, "unshare: operation not permitted");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Fails when the wire format changes: then bump [`WIRE_VERSION`] and update this.
    #[test]
    fn the_wire_format_is_pinned_to_its_version() {
        let spec = WireSpec {
            version: WIRE_VERSION,
            argv: vec!["/bin/true".into()],
            env: vec![("PATH".into(), "/bin".into())],
            cwd: "/workspace".into(),
            binds: vec![WireBind {
                src: "/w".into(),
                dst: "/workspace".into(),
                writable: true,
            }],
            socket: Some(("/run/a.sock".into(), "/run/b.sock".into())),
            limits: WireLimits {
                cpu_seconds: 1,
                address_space_bytes: 2,
                open_files: 3,
                processes: 4,
                tmp_bytes: 5,
            },
            allow_degraded: false,
            caller_pid: 6,
            cgroup: None,
        };
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"version":1,"argv":["/bin/true"],"env":[["PATH","/bin"]],"cwd":"/workspace","binds":[{"src":"/w","dst":"/workspace","writable":true}],"socket":["/run/a.sock","/run/b.sock"],"limits":{"cpu_seconds":1,"address_space_bytes":2,"open_files":3,"processes":4,"tmp_bytes":5},"allow_degraded":false,"caller_pid":6,"cgroup":null}"#
        );
        // A field the reader does not know is an error, not ignored.
        let mut v = serde_json::to_value(&spec).unwrap();
        v["new_limit"] = serde_json::json!(1);
        assert!(serde_json::from_value::<WireSpec>(v).is_err());
    }

    #[test]
    fn nothing_reported_means_success() {
        let r = parse_reports(b"");
        assert!(r.error.is_none() && r.degraded.is_empty());
    }
}
