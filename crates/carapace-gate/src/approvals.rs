//! Pending approvals: a call that policy says to ask about waits here until the owner
//! answers, the deadline passes, or the caller goes away.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use carapace_types::{Principal, PrincipalKind, SessionId};
use tokio::sync::oneshot;

/// A call waiting for the owner, as shown to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalInfo {
    /// Approval id, like `ap_1f2e...`.
    pub id: String,
    /// The session the call belongs to.
    pub session: SessionId,
    /// The tool.
    pub tool: String,
    /// The arguments, scrubbed and truncated.
    pub args_preview: String,
    /// Why policy asks.
    pub reason: String,
    /// The rule that asked.
    pub rule: String,
    /// When it was asked, ms since the epoch.
    pub created_ms: i64,
    /// When it expires, ms since the epoch.
    pub expires_ms: i64,
    /// For a proposed plan: its goal and steps, each pre-evaluated by policy.
    pub plan: Option<PlanInfo>,
    /// What "approve for this session" would let through, like `write_file to
    /// path:notes.md`; `None` when the call names no places (a session answer would then
    /// cover every call of the tool, so it is not offered).
    pub session_scope: Option<String>,
}

/// A proposed plan as shown to the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanInfo {
    /// The goal, in the model's words.
    pub goal: String,
    /// The steps, numbered from 1.
    pub steps: Vec<StepInfo>,
}

/// One step of a proposed plan as shown to the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepInfo {
    /// Its number, from 1.
    pub number: usize,
    /// What it covers, in one line.
    pub text: String,
    /// Why, in the model's words.
    pub why: String,
    /// What policy would say of such a call without the plan: `allow`, `ask`, `deny`.
    pub decision: &'static str,
    /// The rule that would say it.
    pub rule: String,
}

/// The owner's answer to an approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No.
    Deny,
    /// Yes, this call (for a plan: every step policy does not refuse).
    Once,
    /// Yes, and calls of this tool to the same destinations pass for the rest of the
    /// session (for a plan: the same as `Once`).
    Session,
    /// For a plan: these steps (numbered from 1), the others not.
    Steps(Vec<usize>),
}

impl Answer {
    /// True for every answer but `Deny`.
    pub fn approves(&self) -> bool {
        !matches!(self, Answer::Deny)
    }

    /// Stable name for the audit log.
    pub fn as_str(&self) -> String {
        match self {
            Answer::Deny => "deny".into(),
            Answer::Once => "once".into(),
            Answer::Session => "session".into(),
            Answer::Steps(s) => {
                let n: Vec<String> = s.iter().map(usize::to_string).collect();
                format!("steps {}", n.join(","))
            }
        }
    }
}

/// An answer with who gave it.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    pub answer: Answer,
    pub by: String,
}

/// Why an answer to an approval was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ApprovalDecisionError {
    /// No pending approval has that id (answered, expired or never existed).
    NotFound,
    /// Only the owner may answer.
    NotOwner,
    /// The answer does not fit the request (steps for a single call, a step number
    /// outside the plan, a step policy refuses).
    BadAnswer(String),
}

impl std::fmt::Display for ApprovalDecisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApprovalDecisionError::NotFound => f.write_str("no pending approval with that id"),
            ApprovalDecisionError::NotOwner => f.write_str("only the owner may answer approvals"),
            ApprovalDecisionError::BadAnswer(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ApprovalDecisionError {}

struct Entry {
    info: ApprovalInfo,
    answer: oneshot::Sender<Answered>,
}

#[derive(Clone)]
pub(crate) struct Approvals {
    pending: Arc<Mutex<BTreeMap<String, Entry>>>,
    events: tokio::sync::broadcast::Sender<crate::GateEvent>,
}

/// A waiting call's end of an approval. Dropping it (the caller went away or timed
/// out) withdraws the request.
pub(crate) struct Pending {
    id: String,
    rx: Option<oneshot::Receiver<Answered>>,
    approvals: Approvals,
}

impl Pending {
    /// Waits for the answer; `None` when the request was withdrawn.
    pub async fn wait(mut self) -> Option<Answered> {
        let rx = self.rx.take()?;
        rx.await.ok()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Still pending means nobody answered: the caller went away or timed out. Tell
        // the owners' front ends, so no stale prompt stays on screen.
        if self.approvals.lock().remove(&self.id).is_some() {
            let _ = self
                .approvals
                .events
                .send(crate::GateEvent::ApprovalResolved {
                    id: self.id.clone(),
                    approved: false,
                });
        }
    }
}

impl Approvals {
    pub fn new(events: tokio::sync::broadcast::Sender<crate::GateEvent>) -> Approvals {
        Approvals {
            pending: Arc::default(),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A poisoned map only means a panic elsewhere; the data is still consistent
        // because every critical section is a single insert or remove.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(&self, info: ApprovalInfo) -> Pending {
        let (tx, rx) = oneshot::channel();
        let id = info.id.clone();
        self.lock().insert(id.clone(), Entry { info, answer: tx });
        Pending {
            id,
            rx: Some(rx),
            approvals: self.clone(),
        }
    }

    pub fn list(&self) -> Vec<ApprovalInfo> {
        let mut items: Vec<ApprovalInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        items.sort_by_key(|i| i.created_ms);
        items
    }

    pub fn decide(
        &self,
        principal: &Principal,
        id: &str,
        answer: Answer,
    ) -> Result<(), ApprovalDecisionError> {
        if *principal.kind() != PrincipalKind::Owner {
            return Err(ApprovalDecisionError::NotOwner);
        }
        let mut pending = self.lock();
        let entry = pending.get(id).ok_or(ApprovalDecisionError::NotFound)?;
        check_answer(&entry.info, &answer)?;
        let entry = pending.remove(id).ok_or(ApprovalDecisionError::NotFound)?;
        drop(pending);
        // The waiter may have just timed out; then the answer has no one to go to and
        // the call has already failed with CONFIRMATION_TIMEOUT.
        entry
            .answer
            .send(Answered {
                answer,
                by: principal.audit_name(),
            })
            .map_err(|_| ApprovalDecisionError::NotFound)
    }
}

fn check_answer(info: &ApprovalInfo, answer: &Answer) -> Result<(), ApprovalDecisionError> {
    let bad = |s: String| Err(ApprovalDecisionError::BadAnswer(s));
    match (&info.plan, answer) {
        (None, Answer::Steps(_)) => {
            bad("this approval is for one call; answer approve, session or deny".into())
        }
        (None, Answer::Session) if info.session_scope.is_none() => bad(format!(
            "{} names no places, so \"session\" would let every call of it through; approve it once",
            info.tool
        )),
        (Some(plan), Answer::Steps(steps)) => {
            if steps.is_empty() {
                return bad("no steps named".into());
            }
            for n in steps {
                match plan.steps.iter().find(|s| s.number == *n) {
                    None => return bad(format!("the plan has no step {n}")),
                    Some(s) if s.decision == "deny" => {
                        return bad(format!(
                            "step {n} is refused by policy ({}) and cannot be approved",
                            s.rule
                        ));
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!("ap_{}", hex::encode(bytes))
}
