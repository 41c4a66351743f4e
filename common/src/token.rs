//! Join tokens: what a new worker presents to enrol with a coordinator.
//!
//! A token is `lemjoin1.<ca-sha256>.<expiry>.<nonce>.<mac>`: the SHA-256 of the
//! coordinator's CA certificate (64 hex digits; the worker trusts the coordinator only
//! if its certificate chains to a CA with this fingerprint, as `kubeadm join
//! --discovery-token-ca-cert-hash` and k3s's `K10<hash>` tokens do), the expiry in
//! Unix seconds, 16 random bytes, and an HMAC-SHA256 over the rest under a secret
//! that only the coordinator's data dir holds. So a token verifies itself: `lem-coord
//! token create` can mint one while the coordinator runs (its manifest is locked),
//! and the coordinator needs no list of issued tokens. A token can be used by any
//! number of workers until it expires; keep its lifetime short.
//!
//! Pure: the nonce and the time are arguments.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The first field of every token; a later format gets a new prefix.
pub const TOKEN_PREFIX: &str = "lemjoin1";
/// Longest lifetime `parse_ttl` accepts (30 days).
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// A token's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the coordinator's CA certificate (DER).
    pub ca_sha256: [u8; 32],
    /// Unix seconds after which the token is refused.
    pub expires_at_s: u64,
    pub nonce: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token is malformed: {0} (copy the whole line `lem-coord token create` printed)")]
    Malformed(String),
    #[error("join token is forged or damaged: its signature does not match this coordinator's token key (create a new one with `lem-coord token create`)")]
    Forged,
    #[error("join token expired {ago_s} s ago, at {expired_at} (create a new one with `lem-coord token create`)")]
    Expired { expired_at: String, ago_s: u64 },
    #[error("join token is for another coordinator: it names CA {token_ca}, this coordinator's CA is {our_ca} (create a token on this coordinator's head node)")]
    OtherCoordinator { token_ca: String, our_ca: String },
}

impl JoinToken {
    /// The token's text, signed with `secret`.
    pub fn sign(&self, secret: &[u8]) -> String {
        let body = self.body();
        let mac = hex(&mac(secret, &body));
        format!("{body}.{mac}")
    }

    fn body(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            hex(&self.ca_sha256),
            self.expires_at_s,
            hex(&self.nonce)
        )
    }

    /// Reads a token's fields without checking its signature (which only the
    /// coordinator can do); a worker uses this to learn the CA fingerprint to trust.
    pub fn parse(text: &str) -> Result<(JoinToken, [u8; 32]), TokenError> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        if parts.first() != Some(&TOKEN_PREFIX) {
            return Err(TokenError::Malformed(format!(
                "it does not start with `{TOKEN_PREFIX}.`"
            )));
        }
        if parts.len() != 5 {
            return Err(TokenError::Malformed(format!(
                "it has {} dot-separated fields, a token has 5",
                parts.len()
            )));
        }
        let ca_sha256 = unhex_fixed::<32>(parts[1], "CA fingerprint")?;
        let expires_at_s = parts[2]
            .parse::<u64>()
            .map_err(|_| TokenError::Malformed(format!("expiry `{}` is not a number", parts[2])))?;
        let nonce = unhex_fixed::<16>(parts[3], "nonce")?;
        let mac = unhex_fixed::<32>(parts[4], "signature")?;
        Ok((
            JoinToken {
                ca_sha256,
                expires_at_s,
                nonce,
            },
            mac,
        ))
    }

    /// Checks a token as the coordinator does: well formed, signed with `secret`,
    /// for the CA `our_ca_sha256`, and not expired at `now_s`.
    pub fn verify(
        text: &str,
        secret: &[u8],
        our_ca_sha256: &[u8; 32],
        now_s: u64,
    ) -> Result<JoinToken, TokenError> {
        let (token, presented) = JoinToken::parse(text)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key");
        m.update(token.body().as_bytes());
        // Constant-time comparison.
        m.verify_slice(&presented).map_err(|_| TokenError::Forged)?;
        if &token.ca_sha256 != our_ca_sha256 {
            return Err(TokenError::OtherCoordinator {
                token_ca: hex(&token.ca_sha256),
                our_ca: hex(our_ca_sha256),
            });
        }
        if now_s >= token.expires_at_s {
            return Err(TokenError::Expired {
                expired_at: crate::types::format_utc_ms(token.expires_at_s.saturating_mul(1000)),
                ago_s: now_s - token.expires_at_s,
            });
        }
        Ok(token)
    }
}

fn mac(secret: &[u8], body: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key");
    m.update(body.as_bytes());
    m.finalize().into_bytes().into()
}

/// Parses a token lifetime: a whole number with a unit, `s`, `m`, `h` or `d`
/// (`90s`, `30m`, `1h`, `2d`), from 1 s to 30 days.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("--ttl `{text}`: expected a number with a unit, e.g. 90s, 30m, 1h, 2d")
    })?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => {
            return Err(format!(
                "--ttl `{text}`: give a unit (s, m, h or d), e.g. {n}s or {n}m"
            ))
        }
        other => {
            return Err(format!(
                "--ttl `{text}`: unknown unit `{other}` (use s, m, h or d)"
            ))
        }
    };
    let secs = n.saturating_mul(scale);
    if secs == 0 || secs > MAX_TTL_S {
        return Err(format!("--ttl `{text}`: a join token lives from 1s to 30d"));
    }
    Ok(secs)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits (either case); `None` if `text` is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn unhex_fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N], TokenError> {
    unhex(text)
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or_else(|| TokenError::Malformed(format!("its {what} is not {} hex digits", N * 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CA: [u8; 32] = [7; 32];

    fn token(expires_at_s: u64) -> JoinToken {
        JoinToken {
            ca_sha256: CA,
            expires_at_s,
            nonce: [9; 16],
        }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let text = token(1_000).sign(SECRET);
        assert!(text.starts_with("lemjoin1."), "{text}");
        assert_eq!(text.split('.').count(), 5);
        let back = JoinToken::verify(&text, SECRET, &CA, 999).unwrap();
        assert_eq!(back, token(1_000));
        let (parsed, _) = JoinToken::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(parsed.ca_sha256, CA);
    }

    #[test]
    fn an_expired_token_is_refused_with_when() {
        let text = token(1_000).sign(SECRET);
        let e = JoinToken::verify(&text, SECRET, &CA, 1_000).unwrap_err();
        assert!(matches!(e, TokenError::Expired { ago_s: 0, .. }), "{e}");
        let e = JoinToken::verify(&text, SECRET, &CA, 4_600).unwrap_err();
        assert_eq!(
            e.to_string(),
            "join token expired 3600 s ago, at 1970-01-01T00:16:40.000Z (create a new one with `lem-coord token create`)"
        );
    }

    #[test]
    fn any_change_to_a_token_is_forgery() {
        let text = token(1_000).sign(SECRET);
        // Another secret, a later expiry with the old signature, one flipped digit.
        assert_eq!(
            JoinToken::verify(&text, b"another secret", &CA, 0),
            Err(TokenError::Forged)
        );
        let stretched = text.replacen(".1000.", ".9999999999.", 1);
        assert_ne!(stretched, text);
        assert_eq!(
            JoinToken::verify(&stretched, SECRET, &CA, 0),
            Err(TokenError::Forged)
        );
        let last = text.chars().last().unwrap();
        let flipped = format!(
            "{}{}",
            &text[..text.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        assert_eq!(
            JoinToken::verify(&flipped, SECRET, &CA, 0),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_token_of_another_coordinator_names_both_cas() {
        let text = token(1_000).sign(SECRET);
        let e = JoinToken::verify(&text, SECRET, &[8; 32], 0).unwrap_err();
        assert!(matches!(e, TokenError::OtherCoordinator { .. }), "{e}");
        assert!(e.to_string().contains(&hex(&CA)), "{e}");
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = token(1_000).sign(SECRET);
        let cases = [
            ("", "does not start with `lemjoin1.`"),
            ("K10abc::server:secret", "does not start with `lemjoin1.`"),
            ("lemjoin1.aa.bb", "3 dot-separated fields"),
            (
                &good.replacen("lemjoin1.07", "lemjoin1.zz", 1),
                "CA fingerprint is not 64 hex digits",
            ),
            (
                &good.replacen(".1000.", ".soon.", 1),
                "expiry `soon` is not a number",
            ),
            (&good[..good.len() - 2], "signature is not 64 hex digits"),
        ];
        for (text, want) in cases {
            let e = JoinToken::parse(text).unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed(_)) && e.to_string().contains(want),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn ttl_takes_a_number_and_a_unit() {
        assert_eq!(parse_ttl("1s"), Ok(1));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30d"), Ok(MAX_TTL_S));
        for (bad, want) in [
            ("", "expected a number"),
            ("h", "expected a number"),
            ("10", "give a unit"),
            ("5w", "unknown unit `w`"),
            ("0s", "from 1s to 30d"),
            ("31d", "from 1s to 30d"),
            ("99999999999999999999d", "expected a number"),
        ] {
            let e = parse_ttl(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
