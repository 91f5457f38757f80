//! AWS Signature Version 4 checked the way AWS documents it ("Create a signed AWS API
//! request"), written apart from the client's signer so the fake tests that signer
//! against the documented algorithm rather than against itself.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What a request must be signed with.
pub(super) struct Expected<'a> {
    pub(super) access_key_id: &'a str,
    pub(super) secret_access_key: &'a str,
    pub(super) session_token: Option<&'a str>,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
}

/// Why a request is refused: the AWS error kind and its message (all are 403s).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) kind: &'static str,
    pub(super) message: String,
}

fn refuse(kind: &'static str, message: &str) -> Refusal {
    Refusal {
        kind,
        message: message.to_string(),
    }
}

/// The request as it arrived: the path and query exactly as sent (still encoded).
pub(super) struct Received<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    pub(super) headers: &'a HeaderMap,
    pub(super) body: &'a [u8],
}

/// Checks the `Authorization` header of a request against the signature recomputed
/// from the request and the expected credentials.
pub(super) fn verify(req: &Received<'_>, expected: &Expected<'_>) -> Result<(), Refusal> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(refuse(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let incomplete = || {
        refuse(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters",
        )
    };
    let fields = authorization
        .strip_prefix(ALGORITHM)
        .ok_or_else(incomplete)?
        .trim();
    let field = |name: &str| {
        fields
            .split(',')
            .filter_map(|f| f.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let (Some(credential), Some(signed_headers), Some(signature)) = (
        field("Credential"),
        field("SignedHeaders"),
        field("Signature"),
    ) else {
        return Err(incomplete());
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete());
    };
    let invalid_token = || {
        refuse(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    if key_id != expected.access_key_id || header("x-amz-security-token") != expected.session_token
    {
        return Err(invalid_token());
    }
    let amz_date = header("x-amz-date").unwrap_or("");
    if amz_date.len() != 16 || !amz_date.starts_with(date) {
        return Err(refuse(
            "IncompleteSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP",
        ));
    }
    if region != expected.region {
        return Err(refuse(
            "InvalidSignatureException",
            &format!("Credential should be scoped to a valid region. Got '{region}'"),
        ));
    }
    if service != expected.service {
        return Err(refuse(
            "InvalidSignatureException",
            &format!(
                "Credential should be scoped to correct service: '{}'.",
                expected.service
            ),
        ));
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    let must_sign = ["host", "x-amz-date"]
        .into_iter()
        .chain(expected.session_token.map(|_| "x-amz-security-token"));
    for name in must_sign {
        if !signed.contains(&name) {
            return Err(refuse(
                "InvalidSignatureException",
                &format!("'{name}' must be a 'SignedHeader' in the AWS Authorization."),
            ));
        }
    }
    let payload_hash = hex::encode(Sha256::digest(req.body));
    if header("x-amz-content-sha256").is_some_and(|h| h != payload_hash) {
        return Err(refuse(
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }
    let canonical = canonical_request(req, &signed, &payload_hash);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let want = signature_of(expected.secret_access_key, amz_date, &scope, &canonical);
    if want != signature {
        return Err(refuse(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}

/// The canonical request: method, canonical URI, canonical query string, canonical
/// headers, signed headers and the hex SHA-256 of the body, one per line.
fn canonical_request(req: &Received<'_>, signed: &[&str], payload_hash: &str) -> String {
    // Services other than S3 encode each path segment of the (already encoded) path once
    // more, so `%3A` becomes `%253A`.
    let uri: Vec<String> = req.path.split('/').map(uri_encode).collect();
    let uri = if req.path.is_empty() {
        "/".to_string()
    } else {
        uri.join("/")
    };
    let mut query: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let headers: String = signed
        .iter()
        .map(|name| {
            let values: Vec<String> = req
                .headers
                .get_all(*name)
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            format!("{name}:{}\n", values.join(","))
        })
        .collect();
    format!(
        "{}\n{uri}\n{}\n{headers}\n{}\n{payload_hash}",
        req.method,
        query.join("&"),
        signed.join(";"),
    )
}

/// The hex signature of a canonical request.
fn signature_of(secret: &str, amz_date: &str, scope: &str, canonical: &str) -> String {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac(&key, part.as_bytes());
    }
    hex::encode(hmac(&key, string_to_sign.as_bytes()))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// AWS's URI encoding: every byte but the unreserved characters as `%XY`, uppercase.
pub(super) fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `%XY` sequences back to bytes; anything malformed stays as it is.
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::*;

    /// The worked example of AWS's "Create a signed AWS API request" (IAM `ListUsers`).
    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let signature = {
            let req = Received {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                body: b"",
            };
            let canonical = canonical_request(
                &req,
                &["content-type", "host", "x-amz-date"],
                &hex::encode(Sha256::digest(b"")),
            );
            assert_eq!(
                hex::encode(Sha256::digest(canonical.as_bytes())),
                "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
            );
            let signature = signature_of(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830T123600Z",
                "20150830/us-east-1/iam/aws4_request",
                &canonical,
            );
            assert_eq!(
                signature,
                "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
            );
            signature
        };
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature={signature}"
            ))
            .unwrap(),
        );
        let expected = Expected {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
            region: "us-east-1",
            service: "iam",
        };
        let req = Received {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        assert_eq!(verify(&req, &expected), Ok(()));
        let wrong = Expected {
            secret_access_key: "not the secret",
            ..expected
        };
        assert_eq!(
            verify(&req, &wrong).unwrap_err().kind,
            "InvalidSignatureException"
        );
    }

    #[test]
    fn paths_are_encoded_once_more_and_queries_sorted() {
        let headers = HeaderMap::new();
        let req = Received {
            method: "POST",
            path: "/model/a.b-v1%3A0/converse",
            query: "z=1&a=x%20y",
            headers: &headers,
            body: b"",
        };
        let canonical = canonical_request(&req, &[], "h");
        assert_eq!(
            canonical,
            "POST\n/model/a.b-v1%253A0/converse\na=x%20y&z=1\n\n\nh"
        );
        assert_eq!(percent_decode("a%3A0%zz%"), "a:0%zz%");
    }
}
