//! No public type shows a secret value in its `Debug` (or `Display`) output.

use carapace_types::Secret;
use carapace_vault::{
    Backend, BitwardenBackend, EnvBackend, FileVault, KdfParams, KeySource, OnePasswordBackend,
    PassBackend, Redaction, Scrubber, SharedScrubber, VaultError,
};

const VALUE: &str = "value-that-must-never-show";
const PASSPHRASE: &str = "passphrase-that-must-never-show";
const SESSION: &str = "session-that-must-never-show";

#[test]
fn debug_of_every_public_type_hides_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeySource::Passphrase(Secret::new(PASSPHRASE.to_string()));
    let vault =
        FileVault::create_with_params(dir.path(), key.clone(), KdfParams::insecure_for_tests())
            .expect("create");
    vault
        .set("a", &Secret::new(VALUE.to_string()))
        .expect("set");
    let got = vault.get("a").expect("get");
    let scrubber = Scrubber::new(&[Secret::new(VALUE.to_string())]);
    let mut stream = scrubber.stream();
    let partial = stream.push(&format!("text {VALUE}"));
    let shared = SharedScrubber::new(scrubber.clone());
    let mut doc = serde_json::json!({ "k": VALUE });
    let report: Vec<Redaction> = scrubber.scrub_json_report(&mut doc);
    let errors: Vec<VaultError> = vec![
        vault.get("missing").expect_err("missing"),
        FileVault::open(
            dir.path(),
            KeySource::Passphrase(Secret::new(VALUE.to_string())),
        )
        .expect_err("wrong"),
    ];
    let outputs = [
        format!("{vault:?}"),
        format!("{key:?}"),
        format!("{got:?} {got}"),
        format!("{scrubber:?}"),
        format!("{stream:?}"),
        partial,
        format!("{shared:?}"),
        format!("{report:?} {doc}"),
        format!("{errors:?}"),
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        format!(
            "{:?}",
            BitwardenBackend::new().session(Secret::new(SESSION.to_string()))
        ),
        format!("{:?}", EnvBackend::new().map("a", "A")),
        format!("{:?} {:?}", PassBackend::new(), OnePasswordBackend::new()),
        format!("{:?}", KdfParams::default()),
    ];
    for out in outputs {
        for secret in [VALUE, PASSPHRASE, SESSION] {
            assert!(!out.contains(secret), "{secret} shows in {out}");
        }
    }
    assert_eq!(got.expose(), VALUE, "the value is reachable through expose");
}
