//! The encrypted file vault, driven through its public API and by editing its file the
//! way damage or an attacker would.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use carapace_types::Secret;
use carapace_vault::{Backend, FileVault, KdfParams, KeySource, VaultError};
use serde_json::Value;

fn passphrase(p: &str) -> KeySource {
    KeySource::Passphrase(Secret::new(p.to_string()))
}

fn create(dir: &Path) -> FileVault {
    FileVault::create_with_params(
        dir,
        passphrase("correct horse"),
        KdfParams::insecure_for_tests(),
    )
    .expect("create")
}

fn open(dir: &Path) -> Result<FileVault, VaultError> {
    FileVault::open(dir, passphrase("correct horse"))
}

fn secret(v: &str) -> Secret<String> {
    Secret::new(v.to_string())
}

fn read_json(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(FileVault::file_path(dir)).expect("read")).expect("json")
}

fn write_json(dir: &Path, v: &Value) {
    fs::write(
        FileVault::file_path(dir),
        serde_json::to_vec(v).expect("json"),
    )
    .expect("write");
}

#[test]
fn values_survive_a_round_trip_through_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(!FileVault::exists(dir.path()));
    let vault = create(dir.path());
    assert!(FileVault::exists(dir.path()));
    vault
        .set("anthropic/api_key", &secret("sk-ant-value-1"))
        .expect("set");
    vault
        .set("telegram", &secret("12345:telegram-token"))
        .expect("set");
    vault
        .set("telegram", &secret("12345:replaced"))
        .expect("overwrite");

    let again = open(dir.path()).expect("open");
    assert_eq!(
        again.get("anthropic/api_key").expect("get").expose(),
        "sk-ant-value-1"
    );
    assert_eq!(
        again.get("telegram").expect("get").expose(),
        "12345:replaced"
    );
    assert_eq!(
        again.names().expect("names"),
        ["anthropic/api_key", "telegram"]
    );

    again.remove("telegram").expect("remove");
    assert!(matches!(
        again.get("telegram"),
        Err(VaultError::NotFound { .. })
    ));
    assert!(matches!(
        again.remove("telegram"),
        Err(VaultError::NotFound { .. })
    ));
    // The first handle sees the other's writes: every call reads the file.
    assert_eq!(vault.names().expect("names"), ["anthropic/api_key"]);
}

#[test]
fn the_default_costs_are_stored_in_the_header_and_used_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = FileVault::create(dir.path(), passphrase("correct horse")).expect("create");
    vault
        .set("k", &secret("value-with-default-costs"))
        .expect("set");
    let kdf = &read_json(dir.path())["kdf"];
    assert_eq!(kdf["algorithm"], "argon2id");
    assert_eq!(kdf["m_cost_kib"], 65536);
    assert_eq!(kdf["t_cost"], 3);
    assert_eq!(kdf["p_cost"], 1);
    assert_eq!(
        B64.decode(kdf["salt"].as_str().expect("salt"))
            .expect("b64")
            .len(),
        16
    );
    let again = open(dir.path()).expect("open");
    assert_eq!(
        again.get("k").expect("get").expose(),
        "value-with-default-costs"
    );
}

#[test]
fn a_wrong_passphrase_is_told_apart_from_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    create(dir.path())
        .set("k", &secret("value-1234"))
        .expect("set");
    let err = FileVault::open(dir.path(), passphrase("wrong horse")).expect_err("wrong");
    assert!(matches!(err, VaultError::WrongPassphrase { .. }), "{err}");
    let err = FileVault::open(dir.path(), KeySource::KeyFile("/nonexistent".into()))
        .expect_err("wrong kind");
    assert!(matches!(err, VaultError::WrongKeySource { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "the vault at {} is opened with a passphrase, not a key file",
            FileVault::file_path(dir.path()).display()
        )
    );
}

#[test]
fn changing_the_cost_parameters_in_the_header_gives_a_wrong_key_not_a_weaker_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    create(dir.path())
        .set("k", &secret("value-1234"))
        .expect("set");
    let mut v = read_json(dir.path());
    v["kdf"]["t_cost"] = 2.into();
    write_json(dir.path(), &v);
    assert!(matches!(
        open(dir.path()),
        Err(VaultError::WrongPassphrase { .. })
    ));
}

fn flip_ciphertext_byte(v: &mut Value, name: &str) {
    let ct = v["entries"][name]["ciphertext"].as_str().expect("ct");
    let mut bytes = B64.decode(ct).expect("b64");
    bytes[0] ^= 0x01;
    v["entries"][name]["ciphertext"] = B64.encode(bytes).into();
}

#[test]
fn a_flipped_byte_fails_that_entry_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    vault.set("a", &secret("value-a-1234")).expect("set");
    vault.set("b", &secret("value-b-1234")).expect("set");
    let mut v = read_json(dir.path());
    flip_ciphertext_byte(&mut v, "a");
    write_json(dir.path(), &v);

    let vault = open(dir.path()).expect("the vault still opens");
    let err = vault.get("a").expect_err("tampered");
    assert!(
        matches!(&err, VaultError::EntryTampered { name, .. } if name == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("entry `a`"), "{err}");
    assert_eq!(vault.get("b").expect("b is fine").expose(), "value-b-1234");
    // Writing another entry keeps the damaged one as it is, for inspection.
    vault.set("c", &secret("value-c-1234")).expect("set");
    assert_eq!(vault.names().expect("names"), ["a", "b", "c"]);
    assert!(matches!(
        vault.get("a"),
        Err(VaultError::EntryTampered { .. })
    ));
}

#[test]
fn ciphertexts_swapped_between_names_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    vault.set("a", &secret("value-a-1234")).expect("set");
    vault.set("b", &secret("value-b-1234")).expect("set");
    let mut v = read_json(dir.path());
    let a = v["entries"]["a"].clone();
    v["entries"]["a"] = v["entries"]["b"].clone();
    v["entries"]["b"] = a;
    write_json(dir.path(), &v);
    for name in ["a", "b"] {
        let err = vault.get(name).expect_err("swapped");
        assert!(
            matches!(err, VaultError::EntryTampered { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_truncated_file_is_corrupt_names_its_path_and_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    vault.set("a", &secret("value-a-1234")).expect("set");
    let path = FileVault::file_path(dir.path());
    let bytes = fs::read(&path).expect("read");
    let truncated = &bytes[..bytes.len() * 2 / 3];
    fs::write(&path, truncated).expect("write");

    for err in [
        open(dir.path()).expect_err("open"),
        vault.get("a").expect_err("get"),
        vault.set("b", &secret("value-b-1234")).expect_err("set"),
        vault.remove("a").expect_err("remove"),
    ] {
        match &err {
            VaultError::Corrupt { path: p, detail } => {
                assert_eq!(p, &path);
                assert!(detail.contains("truncated"), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    assert_eq!(
        fs::read(&path).expect("read"),
        truncated,
        "the file was rewritten"
    );
}

#[test]
fn damage_is_reported_by_what_is_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    vault.set("a", &secret("value-a-1234")).expect("set");
    let good = read_json(dir.path());
    let path = FileVault::file_path(dir.path());
    let detail_of = |err: VaultError| match err {
        VaultError::Corrupt { detail, .. } => detail,
        other => panic!("expected Corrupt, got {other:?}"),
    };

    fs::write(&path, "").expect("write");
    assert_eq!(
        detail_of(open(dir.path()).expect_err("empty")),
        "the file is empty"
    );

    fs::write(&path, "{\"hello\": 1}").expect("write");
    assert!(detail_of(open(dir.path()).expect_err("other json")).contains("not a carapace vault"));

    let mut v = good.clone();
    v.as_object_mut().expect("object").remove("check");
    write_json(dir.path(), &v);
    assert!(detail_of(open(dir.path()).expect_err("no check")).contains("`check`"));

    let mut v = good.clone();
    v["entries"]["a"]["nonce"] = B64.encode([0u8; 8]).into();
    write_json(dir.path(), &v);
    let detail = detail_of(vault.get("a").expect_err("short nonce"));
    assert!(
        detail.contains("entry `a`") && detail.contains("nonce"),
        "{detail}"
    );

    let mut v = good.clone();
    v["kdf"]["salt"] = "not base64!".into();
    write_json(dir.path(), &v);
    assert!(detail_of(open(dir.path()).expect_err("salt")).contains("salt"));

    let mut v = good.clone();
    v["kdf"]["m_cost_kib"] = (u32::MAX).into();
    write_json(dir.path(), &v);
    assert!(detail_of(open(dir.path()).expect_err("huge memory")).contains("m_cost_kib"));

    let mut v = good;
    v["version"] = 2.into();
    write_json(dir.path(), &v);
    assert!(matches!(
        open(dir.path()),
        Err(VaultError::UnsupportedVersion { version: 2, .. })
    ));
}

#[test]
fn concurrent_writers_lose_no_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    create(dir.path());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                // Each thread has its own handle, so its own lock file descriptor, as a
                // second process would.
                let vault = open(&dir).expect("open");
                for i in 0..5 {
                    vault
                        .set(
                            &format!("t{t}/n{i}"),
                            &secret(&format!("value-{t}-{i}-xxxx")),
                        )
                        .expect("set");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let vault = open(dir.path()).expect("open");
    let names = vault.names().expect("names");
    assert_eq!(names.len(), 40, "{names:?}");
    for t in 0..8 {
        for i in 0..5 {
            assert_eq!(
                vault.get(&format!("t{t}/n{i}")).expect("get").expose(),
                &format!("value-{t}-{i}-xxxx")
            );
        }
    }
}

#[test]
fn the_files_are_private_to_the_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    vault.set("a", &secret("value-a-1234")).expect("set");
    for name in ["vault.json", "vault.lock"] {
        let mode = fs::metadata(dir.path().join(name))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
}

#[test]
fn the_file_never_holds_a_value_or_the_passphrase_in_plain_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    let value = "plain-value-that-must-not-leak";
    vault.set("a", &secret(value)).expect("set");
    let bytes = fs::read(FileVault::file_path(dir.path())).expect("read");
    let text = String::from_utf8_lossy(&bytes);
    for needle in [
        value.to_string(),
        B64.encode(value),
        hex::encode(value),
        "correct horse".to_string(),
        B64.encode("correct horse"),
    ] {
        assert!(!text.contains(&needle), "{needle} is in the file");
    }
}

#[test]
fn create_and_open_check_what_is_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(open(dir.path()), Err(VaultError::NoVault { .. })));
    let missing = dir.path().join("missing");
    assert!(matches!(
        FileVault::create_with_params(&missing, passphrase("x"), KdfParams::insecure_for_tests()),
        Err(VaultError::MissingDirectory { .. })
    ));
    create(dir.path())
        .set("a", &secret("value-a-1234"))
        .expect("set");
    let before = fs::read(FileVault::file_path(dir.path())).expect("read");
    assert!(matches!(
        FileVault::create_with_params(
            dir.path(),
            passphrase("other"),
            KdfParams::insecure_for_tests()
        ),
        Err(VaultError::AlreadyExists { .. })
    ));
    assert_eq!(
        fs::read(FileVault::file_path(dir.path())).expect("read"),
        before
    );
    let fresh = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        FileVault::create_with_params(
            fresh.path(),
            passphrase(""),
            KdfParams::insecure_for_tests()
        ),
        Err(VaultError::InvalidValue { .. })
    ));
    assert!(!FileVault::exists(fresh.path()));
}

#[test]
fn names_and_values_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = create(dir.path());
    for name in ["", " padded", "new\nline", &"x".repeat(257)] {
        assert!(
            matches!(
                vault.set(name, &secret("value-1234")),
                Err(VaultError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(matches!(
        vault.set("a", &secret("")),
        Err(VaultError::InvalidValue { .. })
    ));
}

fn key_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[test]
fn a_key_file_opens_the_vault_and_a_careless_one_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let raw = [7u8; 32];
    let raw_path = key_file(keys.path(), "raw", &raw, 0o600);
    let hex_path = key_file(
        keys.path(),
        "hex",
        format!("{}\n", hex::encode(raw)).as_bytes(),
        0o400,
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let vault =
        FileVault::create(dir.path(), KeySource::KeyFile(raw_path.clone())).expect("create");
    vault.set("a", &secret("value-a-1234")).expect("set");
    assert_eq!(read_json(dir.path())["kdf"]["algorithm"], "keyfile");
    // The same key written as hex opens it.
    let again = FileVault::open(dir.path(), KeySource::KeyFile(hex_path)).expect("open");
    assert_eq!(again.get("a").expect("get").expose(), "value-a-1234");

    let other = key_file(keys.path(), "other", &[8u8; 32], 0o600);
    assert!(matches!(
        FileVault::open(dir.path(), KeySource::KeyFile(other)),
        Err(VaultError::WrongPassphrase { .. })
    ));
    assert!(matches!(
        FileVault::open(dir.path(), passphrase("correct horse")),
        Err(VaultError::WrongKeySource { .. })
    ));

    let cases = [
        (key_file(keys.path(), "readable", &raw, 0o644), "mode 644"),
        (key_file(keys.path(), "group", &raw, 0o640), "mode 640"),
        (
            key_file(keys.path(), "short", &raw[..31], 0o600),
            "not 31 bytes",
        ),
        (key_file(keys.path(), "nothex", &[b'z'; 64], 0o600), "hex"),
        (keys.path().to_path_buf(), "not a regular file"),
        (keys.path().join("missing"), "cannot be read"),
    ];
    for (path, expected) in cases {
        match FileVault::open(dir.path(), KeySource::KeyFile(path.clone())) {
            Err(VaultError::KeyFile { detail, .. }) => {
                assert!(detail.contains(expected), "{}: {detail}", path.display())
            }
            other => panic!("{}: expected KeyFile, got {other:?}", path.display()),
        }
    }
}

/// Run by `concurrent_processes_lose_no_update` in child processes of this test binary;
/// does nothing when run directly.
#[test]
fn child_writer_process() {
    let (Some(dir), Some(id)) = (
        std::env::var_os("CARAPACE_VAULT_CHILD_DIR"),
        std::env::var("CARAPACE_VAULT_CHILD_ID").ok(),
    ) else {
        return;
    };
    let vault = open(Path::new(&dir)).expect("open");
    for i in 0..10 {
        vault
            .set(
                &format!("p{id}/n{i}"),
                &secret(&format!("value-{id}-{i}-xxxx")),
            )
            .expect("set");
    }
}

#[test]
fn concurrent_processes_lose_no_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    create(dir.path());
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..4)
        .map(|id| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_writer_process",
                    "--test-threads=1",
                    "--quiet",
                ])
                .env("CARAPACE_VAULT_CHILD_DIR", dir.path())
                .env("CARAPACE_VAULT_CHILD_ID", id.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success());
    }
    let names = open(dir.path()).expect("open").names().expect("names");
    assert_eq!(names.len(), 40, "{names:?}");
}
