//! Fuzzes JWT parsing and checking (`JwtVerifier::verify`, HS256 with a
//! fixed secret), two ways:
//! - arbitrary token text: never a panic, and never accepted (nobody but
//!   this file knows the secret, and the fuzzer cannot forge an HMAC);
//! - correctly signed tokens with arbitrary headers and claims (or claims
//!   JSON written by hand), so the claim checks run: whatever is accepted
//!   has a non-empty `sub`, an `exp` in the future within the lifetime
//!   bound, and the configured issuer; a token built valid (HS256 header,
//!   future `exp`, `sub`, right `iss`/`aud`, no future `nbf`) is accepted
//!   with its claims; one whose signature was altered is refused.

#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use std::sync::LazyLock;
use switchboard::auth::jwt::JwtVerifier;
use switchboard::auth::now_secs;
use switchboard::config::{Config, Secret};

const SECRET: &str = "fuzzing-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "switchboard";
const MAX_LIFETIME: u64 = 3600;
const LEEWAY: u64 = 5;

/// Two verifiers: one with issuer and audience configured, one without.
static VERIFIERS: LazyLock<[JwtVerifier; 2]> = LazyLock::new(|| {
    let config = |iss_aud: bool| Config {
        jwt_secret: Some(Secret::new(SECRET)),
        jwt_issuer: iss_aud.then(|| ISSUER.to_owned()),
        jwt_audience: iss_aud.then(|| AUDIENCE.to_owned()),
        jwt_leeway_secs: LEEWAY,
        jwt_max_lifetime_secs: MAX_LIFETIME,
        ..Config::default()
    };
    [
        JwtVerifier::from_config(&config(false)).expect("an HS256 verifier"),
        JwtVerifier::from_config(&config(true)).expect("an HS256 verifier"),
    ]
});

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text as the token.
    Raw(String, bool),
    /// A token signed with the server's secret.
    Signed {
        header: Header,
        claims: Claims,
        /// Checked by the verifier with issuer and audience.
        strict: bool,
        /// Replace one character of the signature: (where, with which).
        tamper: Option<(u8, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
enum Header {
    /// `{"alg":"HS256","typ":"JWT"}`.
    Standard,
    /// HS256 with extra members (`kid`, `crit`, anything).
    Extra(Vec<(String, String)>),
    /// Header JSON written by hand.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Claims {
    Fields(Box<Fields>),
    /// Claims JSON (or not) written by hand.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Fields {
    sub: Option<String>,
    /// Seconds from now.
    exp: Option<i32>,
    /// Seconds from now.
    nbf: Option<i32>,
    iss: Option<Choice>,
    aud: Option<Choice>,
    scopes: Option<Scopes>,
    scope: Option<String>,
    rooms: Option<Vec<String>>,
    jti: Option<String>,
    iat: Option<u64>,
    extra: Vec<(String, String)>,
}

/// The configured value, or anything.
#[derive(Arbitrary, Debug)]
enum Choice {
    Configured,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Scopes {
    List(Vec<String>),
    Text(String),
}

const KNOWN: [&str; 10] = [
    "sub", "exp", "nbf", "iss", "aud", "scopes", "scope", "rooms", "jti", "iat",
];

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(token, strict) => {
            let verifier = &VERIFIERS[usize::from(strict)];
            if let Ok(verified) = verifier.verify(&token) {
                panic!("a token not signed here was accepted: {token:?} -> {verified:?}");
            }
        }
        Input::Signed {
            header,
            claims,
            strict,
            tamper,
        } => signed(header, claims, strict, tamper),
    }
});

fn signed(header: Header, claims: Claims, strict: bool, tamper: Option<(u8, u8)>) {
    let now = now_secs();
    let (header_json, standard) = match header {
        Header::Standard => (r#"{"alg":"HS256","typ":"JWT"}"#.to_owned(), true),
        Header::Extra(members) => {
            let mut map = Map::new();
            for (key, value) in members {
                map.insert(key, Value::String(value));
            }
            map.insert("alg".into(), json!("HS256"));
            (Value::Object(map).to_string(), false)
        }
        Header::Raw(text) => (text, false),
    };
    let (claims_json, expect_ok) = match &claims {
        Claims::Fields(fields) => claims_of(fields, now, strict),
        Claims::Raw(text) => (text.clone(), None),
    };
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&header_json),
        URL_SAFE_NO_PAD.encode(&claims_json)
    );
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
        .expect("HMAC signing cannot fail");
    let mut signature = signature.into_bytes();
    let mut tampered = false;
    if let Some((at, with)) = tamper {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let at = usize::from(at) % signature.len();
        let with = ALPHABET[usize::from(with) % ALPHABET.len()];
        tampered = signature[at] != with;
        signature[at] = with;
    }
    let token = format!("{message}.{}", String::from_utf8_lossy(&signature));
    let outcome = VERIFIERS[usize::from(strict)].verify(&token);
    if tampered {
        assert!(
            outcome.is_err(),
            "a token with an altered signature was accepted: {token}"
        );
        return;
    }
    if let Ok(verified) = &outcome {
        let identity = &verified.identity;
        assert!(!identity.user.is_empty(), "accepted without a sub");
        let exp = identity.expires_at.expect("an exp");
        assert!(exp + LEEWAY >= now, "accepted after its exp");
        assert!(
            exp.saturating_sub(now) <= MAX_LIFETIME + 1,
            "accepted past the lifetime bound"
        );
        let claims: Value = serde_json::from_str(&claims_json).expect("accepted claims are JSON");
        assert_eq!(claims["sub"].as_str(), Some(&*identity.user));
        if strict {
            assert_eq!(claims["iss"], ISSUER, "accepted from another issuer");
        }
    }
    if standard && let Some(expected) = expect_ok {
        match (&outcome, expected) {
            (Ok(verified), Expected::Accept { user }) => {
                assert_eq!(&*verified.identity.user, user);
            }
            (Err(_), Expected::Refuse) => {}
            (outcome, expected) => {
                panic!("expected {expected:?}, got {outcome:?} for claims {claims_json}")
            }
        }
    }
}

/// What a token with these claims must get, when it is clear-cut.
#[derive(Debug)]
enum Expected<'a> {
    Accept { user: &'a str },
    Refuse,
}

/// The claims JSON and, when clear-cut, the verdict it must get.
fn claims_of(fields: &Fields, now: u64, strict: bool) -> (String, Option<Expected<'_>>) {
    let mut map = Map::new();
    let at = |offset: i32| now.saturating_add_signed(i64::from(offset));
    let choice = |c: &Option<Choice>, configured: &str| {
        c.as_ref().map(|c| match c {
            Choice::Configured => configured.to_owned(),
            Choice::Other(other) => other.clone(),
        })
    };
    if let Some(sub) = &fields.sub {
        map.insert("sub".into(), json!(sub));
    }
    if let Some(exp) = fields.exp {
        map.insert("exp".into(), json!(at(exp)));
    }
    if let Some(nbf) = fields.nbf {
        map.insert("nbf".into(), json!(at(nbf)));
    }
    let iss = choice(&fields.iss, ISSUER);
    let aud = choice(&fields.aud, AUDIENCE);
    if let Some(iss) = &iss {
        map.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = &aud {
        map.insert("aud".into(), json!(aud));
    }
    match &fields.scopes {
        Some(Scopes::List(list)) => _ = map.insert("scopes".into(), json!(list)),
        Some(Scopes::Text(text)) => _ = map.insert("scopes".into(), json!(text)),
        None => {}
    }
    if let Some(scope) = &fields.scope {
        map.insert("scope".into(), json!(scope));
    }
    if let Some(rooms) = &fields.rooms {
        map.insert("rooms".into(), json!(rooms));
    }
    if let Some(jti) = &fields.jti {
        map.insert("jti".into(), json!(jti));
    }
    if let Some(iat) = fields.iat {
        map.insert("iat".into(), json!(iat));
    }
    for (key, value) in &fields.extra {
        if !KNOWN.contains(&key.as_str()) {
            map.insert(key.clone(), json!(value));
        }
    }
    let text = Value::Object(map).to_string();
    // Clear-cut cases only, well away from the clock's edges.
    let live = fields
        .exp
        .is_some_and(|exp| exp > 60 && (exp as u64) < MAX_LIFETIME - 60);
    let started = fields.nbf.is_none_or(|nbf| nbf < -60);
    let issuer_ok = !strict || iss.as_deref() == Some(ISSUER);
    let audience_ok = !strict || aud.as_deref() == Some(AUDIENCE);
    let expected = match fields.sub.as_deref() {
        Some(user) if !user.is_empty() && live && started && issuer_ok && audience_ok => {
            Some(Expected::Accept { user })
        }
        None | Some("") => Some(Expected::Refuse),
        _ if fields.exp.is_none_or(|exp| exp < -60) => Some(Expected::Refuse),
        _ if fields.nbf.is_some_and(|nbf| nbf > 60) => Some(Expected::Refuse),
        _ if strict && (iss.as_deref() != Some(ISSUER) || aud.as_deref() != Some(AUDIENCE)) => {
            Some(Expected::Refuse)
        }
        _ => None,
    };
    (text, expected)
}
