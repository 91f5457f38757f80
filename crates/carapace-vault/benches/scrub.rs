//! The scrubber runs on every tool result before the model sees it. Budget: 1 MB of tool
//! output against a vault of 100 secrets in under 5 ms.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use carapace_types::Secret;
use carapace_vault::Scrubber;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn token(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..n)
            .map(|_| ALPHABET[(self.next() % 64) as usize] as char)
            .collect()
    }
}

/// 100 secrets of 16 to 64 characters, like API keys and passwords.
fn secrets(rng: &mut Rng) -> Vec<Secret<String>> {
    (0..100)
        .map(|i| Secret::new(rng.token(16 + (i * 7) % 49)))
        .collect()
}

const PROSE: &str = "The deployment finished without errors; the service answered \
    health checks within 40 ms and the queue drained overnight. Next, review the \
    migration notes, then ask the owner before rotating the credentials on staging. ";

/// About `size` bytes of tool output: prose, JSON records, hex digests, base64 blobs, a
/// few URLs and ordinary identifiers.
fn tool_output(rng: &mut Rng, size: usize) -> String {
    let mut out = String::with_capacity(size + 1024);
    let mut i = 0u64;
    while out.len() < size {
        i += 1;
        match rng.next() % 6 {
            0 | 1 => out.push_str(PROSE),
            2 => out.push_str(&format!(
                "{{\"id\": {i}, \"name\": \"item-{i}\", \"tags\": [\"alpha\", \"beta\"], \
                 \"owner\": \"user{}@example.com\", \"ok\": true}}\n",
                i % 97
            )),
            3 => out.push_str(&format!("sha256={} ", hex::encode(rng.bytes(32)))),
            4 => out.push_str(&format!("blob: {}\n", STANDARD.encode(rng.bytes(180)))),
            _ => out.push_str(&format!(
                "GET https://api.example.com/v1/items/{i}?page=2 200 ({} ms) request_id={}\n",
                i % 300,
                rng.token(24)
            )),
        }
    }
    out
}

/// `text` with a few secrets planted in it, raw and encoded.
fn with_secrets(text: &str, secrets: &[Secret<String>]) -> String {
    let mut out = text.to_string();
    let plants = [
        secrets[3].expose().clone(),
        STANDARD.encode(secrets[17].expose()),
        hex::encode(secrets[42].expose()),
        format!("postgres://app:{}@db:5432/app", secrets[60].expose()),
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_string(),
    ];
    let step = out.len() / (plants.len() + 1);
    for (k, plant) in plants.iter().enumerate().rev() {
        let mut at = step * (k + 1);
        while !out.is_char_boundary(at) {
            at += 1;
        }
        out.insert_str(at, &format!(" {plant} "));
    }
    out
}

fn scrub(c: &mut Criterion) {
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let secrets = secrets(&mut rng);
    let build_start = std::time::Instant::now();
    let s = Scrubber::new(&secrets);
    eprintln!(
        "building the scrubber for 100 secrets took {:?}",
        build_start.elapsed()
    );

    let clean = tool_output(&mut rng, 1 << 20);
    let dirty = with_secrets(&clean, &secrets);
    let small = tool_output(&mut rng, 1024);
    {
        let mut check = clean.clone();
        assert!(
            !s.scrub_string(&mut check),
            "the clean text must hold no secret"
        );
        let mut check = dirty.clone();
        assert!(s.scrub_string(&mut check));
        assert_eq!(check.matches("[REDACTED]").count(), 5);
    }

    let mut g = c.benchmark_group("scrub");
    for (name, text) in [
        ("1MB_clean", &clean),
        ("1MB_5_secrets", &dirty),
        ("1KB", &small),
    ] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("string", name), text, |b, text| {
            b.iter_batched_ref(
                || text.clone(),
                |t| s.scrub_string(black_box(t)),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.throughput(Throughput::Bytes(clean.len() as u64));
    g.bench_function("contains_secret/1MB_clean", |b| {
        b.iter(|| s.contains_secret(black_box(&clean)))
    });
    g.bench_function("stream/1MB_clean_4KB_chunks", |b| {
        b.iter(|| {
            let mut stream = s.stream();
            let mut n = 0;
            let mut at = 0;
            while at < clean.len() {
                let mut end = (at + 4096).min(clean.len());
                while !clean.is_char_boundary(end) {
                    end += 1;
                }
                n += stream.push(&clean[at..end]).len();
                at = end;
            }
            n + stream.finish().len()
        })
    });
    g.finish();
    c.bench_function("scrub/build_100_secrets", |b| {
        b.iter(|| Scrubber::new(black_box(&secrets)))
    });
}

criterion_group!(benches, scrub);
criterion_main!(benches);
