//! PII entity types, and finding PII by validated patterns where a pattern is exact: e-mail
//! addresses, credit card numbers (Luhn-checked), US social security numbers (area/group/serial
//! rules), IP addresses (v4 octets in range, v6 parsed), phone numbers (North American and
//! international forms). classifier-svc adds these to its token-classification head's entities
//! (names, addresses, places... need the model); router-svc applies per-model PII policies with
//! the union and masks by span.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use regex::Regex;

/// Every entity type a policy can name (Presidio's names; the model's two address schemas are
/// folded into ADDRESS and LOCATION).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiType {
    EmailAddress,
    CreditCard,
    UsSsn,
    IpAddress,
    PhoneNumber,
    Person,
    Address,
    Location,
    Organization,
    DateTime,
    IbanCode,
    UsDriverLicense,
    Age,
    Title,
    Prefix,
    Nrp,
    DomainName,
    ZipCode,
}

pub const ALL: [PiiType; 18] = [
    PiiType::EmailAddress,
    PiiType::CreditCard,
    PiiType::UsSsn,
    PiiType::IpAddress,
    PiiType::PhoneNumber,
    PiiType::Person,
    PiiType::Address,
    PiiType::Location,
    PiiType::Organization,
    PiiType::DateTime,
    PiiType::IbanCode,
    PiiType::UsDriverLicense,
    PiiType::Age,
    PiiType::Title,
    PiiType::Prefix,
    PiiType::Nrp,
    PiiType::DomainName,
    PiiType::ZipCode,
];

impl PiiType {
    pub fn as_str(self) -> &'static str {
        match self {
            PiiType::EmailAddress => "EMAIL_ADDRESS",
            PiiType::CreditCard => "CREDIT_CARD",
            PiiType::UsSsn => "US_SSN",
            PiiType::IpAddress => "IP_ADDRESS",
            PiiType::PhoneNumber => "PHONE_NUMBER",
            PiiType::Person => "PERSON",
            PiiType::Address => "ADDRESS",
            PiiType::Location => "LOCATION",
            PiiType::Organization => "ORGANIZATION",
            PiiType::DateTime => "DATE_TIME",
            PiiType::IbanCode => "IBAN_CODE",
            PiiType::UsDriverLicense => "US_DRIVER_LICENSE",
            PiiType::Age => "AGE",
            PiiType::Title => "TITLE",
            PiiType::Prefix => "PREFIX",
            PiiType::Nrp => "NRP",
            PiiType::DomainName => "DOMAIN_NAME",
            PiiType::ZipCode => "ZIP_CODE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|t| t.as_str() == s)
    }

    /// Found by `detect` without a model.
    pub fn by_pattern(self) -> bool {
        matches!(
            self,
            PiiType::EmailAddress
                | PiiType::CreditCard
                | PiiType::UsSsn
                | PiiType::IpAddress
                | PiiType::PhoneNumber
        )
    }
}

/// A found span (byte offsets into the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: PiiType,
    pub start: usize,
    pub end: usize,
}

struct Patterns {
    email: Regex,
    card: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        email: Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
            .unwrap(),
        card: Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").unwrap(),
        ssn: Regex::new(r"\b(\d{3})-(\d{2})-(\d{4})\b").unwrap(),
        ipv4: Regex::new(r"\b(?:\d{1,3}\.){3}\d{1,3}\b").unwrap(),
        ipv6: Regex::new(r"(?i)\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b").unwrap(),
        phone: Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)\s?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b")
            .unwrap(),
    })
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Every PII span in `text`, in order, without overlaps (earlier, longer matches win).
pub fn detect(text: &str) -> Vec<Span> {
    let p = patterns();
    let mut spans = Vec::new();
    let mut push = |kind, start, end| spans.push(Span { kind, start, end });
    for m in p.email.find_iter(text) {
        push(PiiType::EmailAddress, m.start(), m.end());
    }
    for c in p.ssn.captures_iter(text) {
        let (a, g, s) = (&c[1], &c[2], &c[3]);
        let area: u32 = a.parse().unwrap_or(0);
        if area != 0 && area != 666 && area < 900 && g != "00" && s != "0000" {
            let m = c.get(0).unwrap();
            push(PiiType::UsSsn, m.start(), m.end());
        }
    }
    for m in p.card.find_iter(text) {
        let digits: Vec<u32> = m.as_str().chars().filter_map(|c| c.to_digit(10)).collect();
        if (13..=19).contains(&digits.len()) && luhn(&digits) {
            push(PiiType::CreditCard, m.start(), m.end());
        }
    }
    for m in p.ipv4.find_iter(text) {
        if m.as_str().parse::<std::net::Ipv4Addr>().is_ok() {
            push(PiiType::IpAddress, m.start(), m.end());
        }
    }
    for m in p.ipv6.find_iter(text) {
        let full = m.as_str().contains("::") || m.as_str().matches(':').count() == 7;
        if full && m.as_str().parse::<std::net::Ipv6Addr>().is_ok() {
            push(PiiType::IpAddress, m.start(), m.end());
        }
    }
    for m in p.phone.find_iter(text) {
        push(PiiType::PhoneNumber, m.start(), m.end());
    }
    without_overlaps(spans)
}

/// Sorted by start; where spans overlap, the earlier (then longer) one stays.
fn without_overlaps(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if out.last().is_none_or(|l| s.start >= l.end) {
            out.push(s);
        }
    }
    out
}

/// `patterns` (exact) and `model` spans together: a model span overlapping a pattern span gives
/// way to it; the rest are kept, in order, without overlaps.
pub fn merge(patterns: Vec<Span>, model: Vec<Span>) -> Vec<Span> {
    let mut all: Vec<Span> = model
        .into_iter()
        .filter(|m| !patterns.iter().any(|p| m.start < p.end && p.start < m.end))
        .collect();
    all.extend(patterns);
    without_overlaps(all)
}

/// `text` with those of `spans` (sorted, not overlapping, byte offsets on char boundaries) whose
/// type is in `kinds` replaced by `[TYPE]`; spans that do not fit the text are ignored.
pub fn mask_spans(text: &str, spans: &[Span], kinds: &BTreeSet<PiiType>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in spans.iter().filter(|s| kinds.contains(&s.kind)) {
        if s.start < at || text.get(s.start..s.end).is_none() {
            continue;
        }
        out.push_str(&text[at..s.start]);
        out.push('[');
        out.push_str(s.kind.as_str());
        out.push(']');
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<&'static str> {
        detect(t).iter().map(|s| s.kind.as_str()).collect()
    }

    #[test]
    fn validated_patterns_find_pii_and_spare_lookalikes() {
        assert_eq!(kinds("mail jane.doe@example.co.uk now"), ["EMAIL_ADDRESS"]);
        assert_eq!(kinds("card 4111 1111 1111 1111 ok"), ["CREDIT_CARD"]);
        assert!(kinds("order 4111 1111 1111 1112").is_empty(), "fails Luhn");
        assert_eq!(kinds("ssn 123-45-6789"), ["US_SSN"]);
        assert!(
            kinds("ssn 666-45-6789 or 123-00-6789").is_empty(),
            "invalid area/group"
        );
        assert_eq!(
            kinds("from 192.168.1.20 and 2001:db8::1"),
            ["IP_ADDRESS", "IP_ADDRESS"]
        );
        assert!(kinds("version 1.2.3.400").is_empty(), "octet out of range");
        assert_eq!(kinds("call (919) 555-0134 today"), ["PHONE_NUMBER"]);
        assert_eq!(kinds("or +1 919-555-0134"), ["PHONE_NUMBER"]);
        assert!(kinds("What is the capital of North Carolina in 2024?").is_empty());
    }

    #[test]
    fn masking_replaces_only_the_chosen_types() {
        let t = "me: a@b.io, card 4111-1111-1111-1111";
        let only_card = BTreeSet::from([PiiType::CreditCard]);
        let found = detect(t);
        assert_eq!(
            mask_spans(t, &found, &only_card),
            "me: a@b.io, card [CREDIT_CARD]"
        );
        let all: BTreeSet<_> = ALL.into_iter().collect();
        assert_eq!(
            mask_spans(t, &found, &all),
            "me: [EMAIL_ADDRESS], card [CREDIT_CARD]"
        );
    }

    #[test]
    fn patterns_win_over_overlapping_model_spans_and_masks_use_spans() {
        let t = "Ann Lee, ann@x.io";
        let model = vec![
            Span {
                kind: PiiType::Person,
                start: 0,
                end: 7,
            },
            Span {
                kind: PiiType::Person,
                start: 9,
                end: 12,
            },
        ];
        let merged = merge(detect(t), model);
        let kinds: Vec<_> = merged.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [PiiType::Person, PiiType::EmailAddress]);
        let only_person = BTreeSet::from([PiiType::Person]);
        assert_eq!(mask_spans(t, &merged, &only_person), "[PERSON], ann@x.io");
        let bad = [Span {
            kind: PiiType::Person,
            start: 5,
            end: 99,
        }];
        assert_eq!(
            mask_spans(t, &bad, &only_person),
            t,
            "out-of-range span ignored"
        );
        assert_eq!(PiiType::parse("LOCATION"), Some(PiiType::Location));
        assert!(PiiType::Person.as_str() == "PERSON" && !PiiType::Person.by_pattern());
    }
}
