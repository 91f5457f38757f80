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
}

/// Why an answer to an approval was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ApprovalDecisionError {
    /// No pending approval has that id (answered, expired or never existed).
    NotFound,
    /// Only the owner may answer.
    NotOwner,
}

impl std::fmt::Display for ApprovalDecisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApprovalDecisionError::NotFound => f.write_str("no pending approval with that id"),
            ApprovalDecisionError::NotOwner => f.write_str("only the owner may answer approvals"),
        }
    }
}

impl std::error::Error for ApprovalDecisionError {}

struct Entry {
    info: ApprovalInfo,
    answer: oneshot::Sender<bool>,
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
    rx: Option<oneshot::Receiver<bool>>,
    approvals: Approvals,
}

impl Pending {
    /// Waits for the answer; `None` when the request was withdrawn.
    pub async fn wait(mut self) -> Option<bool> {
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
        approve: bool,
    ) -> Result<(), ApprovalDecisionError> {
        if *principal.kind() != PrincipalKind::Owner {
            return Err(ApprovalDecisionError::NotOwner);
        }
        let entry = self
            .lock()
            .remove(id)
            .ok_or(ApprovalDecisionError::NotFound)?;
        // The waiter may have just timed out; then the answer has no one to go to and
        // the call has already failed with CONFIRMATION_TIMEOUT.
        entry
            .answer
            .send(approve)
            .map_err(|_| ApprovalDecisionError::NotFound)
    }
}

pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    format!("ap_{}", hex::encode(bytes))
}
