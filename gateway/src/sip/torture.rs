//! RFC 4475 torture messages and property tests: no bytes from the network may panic the parser.
//!
//! Each message is written after the RFC's text (its short name in the comment). A valid one must
//! parse; an invalid one must be refused, which the node answers with a 400 when it can read
//! enough to answer, or drops. A few the RFC calls invalid are accepted here because the fault is
//! in a field the node never interprets (a bad Date); those say so.

use super::fuzzing::exercise_parser;
use super::message::{Contact, SipMessage};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Parses,
    Refused,
}

/// (RFC 4475 name, expectation, message with `\r\n` line ends).
fn torture_messages() -> Vec<(&'static str, Expect, String)> {
    vec![
        // 3.1.1.1: a short tortuous INVITE: folding, compact names, odd spacing and case.
        (
            "wsinv",
            Expect::Parses,
            "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n\
TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n\
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
MaX-fOrWaRdS: 0068\r\n\
Call-ID: wsinv.ndaksdj@192.0.2.1\r\n\
Content-Length   : 150\r\n\
cseq: 0009\r\n  INVITE\r\n\
Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
s :\r\n\
NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n\
UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n\
Content-Type: application/sdp\r\n\
Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n\
v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n \
SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  \
secondparam ; q = 0.33\r\n\r\n\
v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\n\
m=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
                .to_string(),
        ),
        // 3.1.1.3: a valid use of the % escaping mechanism.
        (
            "esc01",
            Expect::Parses,
            "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n\
To: sip:%75se%72@example.com\r\n\
From: <sip:I%20have%20spaces@example.net>;tag=938\r\n\
Max-Forwards: 87\r\ni: esc01.239409asdfakjkn23onasd0-3234\r\nCSeq: 234234 INVITE\r\n\
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw\r\n\
C: application/sdp\r\nContact:\r\n  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>\r\n\
Content-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.1.5: using % and NUL escapes in the user part.
        (
            "escnull",
            Expect::Parses,
            "REGISTER sip:example.com SIP/2.0\r\nTo: sip:null-%00-null@example.com\r\n\
From: sip:null-%00-null@example.com;tag=839923423\r\nMax-Forwards: 70\r\n\
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd\r\nCSeq: 14398234 REGISTER\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw\r\n\
Contact: <sip:%00@host5.example.com>\r\nContact: <sip:%00%00@host5.example.com>\r\n\
L:0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.1.7: long values in header fields.
        (
            "longreq",
            Expect::Parses,
            format!(
                "INVITE sip:user@example.com SIP/2.0\r\n\
To: \"I have a user name of {long} proportion\" <sip:user@example.com:6000;unknownparam1=very{long}longvalue>\r\n\
From: sip:{long}@example.net;tag={long}\r\n\
Call-ID: longreq.one{long}really{long}longcallid\r\nCSeq: 3882340 INVITE\r\n\
Via: SIP/2.0/TCP sip33.example.com\r\nv: SIP/2.0/TCP sip32.example.com\r\n\
V: SIP/2.0/TCP sip31.example.com\r\nVia: SIP/2.0/TCP sip30.example.com\r\n\
Via: SIP/2.0/TCP sip29.example.com;branch=z9hG4bK{long}\r\n\
Max-Forwards: 67\r\nContact: <sip:amazinglylongcallee@example.net>\r\nl: 0\r\n\r\n",
                long = "very".repeat(100)
            ),
        ),
        // 3.1.1.8: extra trailing octets in a UDP datagram (ignored after Content-Length).
        (
            "dblreq",
            Expect::Parses,
            "REGISTER sip:example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\n\
From: sip:j.user@example.com;tag=43251j3j324\r\nMax-Forwards: 8\r\nI: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n\
Contact: sip:j.user@host.example.com\r\nCSeq: 8 REGISTER\r\n\
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\r\nContent-Length: 0\r\n\r\n\
INVITE sip:joe@example.com SIP/2.0\r\nt: sip:joe@example.com\r\n\r\n"
                .to_string(),
        ),
        // 3.1.1.9: semicolon-separated parameters in the URI user part.
        (
            "semiuri",
            Expect::Parses,
            "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\r\nTo: sip:j_user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\nMax-Forwards: 3\r\n\
Call-ID: semiuri.0ha0isndaksdj\r\nCSeq: 8 OPTIONS\r\nAccept: application/sdp, application/pkcs7-mime,\r\n \
multipart/mixed, multipart/signed,\r\n message/sip, message/sipfrag\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.1.11: a multipart body (the body is opaque here).
        (
            "noreason",
            Expect::Parses,
            "SIP/2.0 100 \r\nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n\
Call-ID: noreason.asndj203insdf99223ndf\r\nCSeq: 35 INVITE\r\n\
From: <sip:user@example.com>;tag=39ansfi3\r\nTo: <sip:user@example.edu>;tag=902jndnke3\r\n\
Content-Length: 0\r\nContact: <sip:user@host.example.edu>\r\n\r\n"
                .to_string(),
        ),
        // 3.1.1.13: an unknown method; rsip cannot represent it, so it is refused (dropped).
        (
            "intmeth",
            Expect::Refused,
            "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\r\n\
To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\r\n\
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\u{44e}\u{449}\u{438}\u{439}\";tag=_token~1'+`*%!-.\r\n\
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\r\nCSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\r\n\
Max-Forwards: 255\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.1: an extraneous header field separator (`To: sip:a; tag=1 ;>`) and bad Contact.
        (
            "badinv01",
            Expect::Refused,
            "INVITE sip:user@example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=134161461246\r\nMax-Forwards: 7\r\nCall-ID: badinv01.0ha0isndaksdjasdf3234nas\r\n\
CSeq: 8 INVITE\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\nContact: \"Joe\" <sip:joe@example.org>;;;;\r\n\
Content-Length: 152\r\nContent-Type: application/sdp\r\n\r\n\
v=0\r\no=-0 0 IN IP4 192.0.2.15\r\ns=-\r\nc=IN IP4 192.0.2.15\r\nt=0 0\r\nm=audio 492170 RTP/AVP 0\r\n"
                .to_string(),
        ),
        // 3.1.2.2: Content-Length larger than the message.
        (
            "clerr",
            Expect::Refused,
            "INVITE sip:user@example.com SIP/2.0\r\nMax-Forwards: 80\r\nTo: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=93942939o2\r\nContact: <sip:caller@hungry.example.net>\r\n\
Call-ID: clerr.0ha0isndaksdjweiafasdk3\r\nCSeq: 8 INVITE\r\n\
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523\r\n\
Content-Type: application/sdp\r\nContent-Length: 9999\r\n\r\n\
v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.155\r\n"
                .to_string(),
        ),
        // 3.1.2.3: negative Content-Length.
        (
            "ncl",
            Expect::Refused,
            "INVITE sip:user@example.com SIP/2.0\r\nMax-Forwards: 254\r\nTo: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=32394234\r\nCall-ID: ncl.0ha0isndaksdj2193423r542w35\r\nCSeq: 0 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\r\nContact: <sip:caller@example53.example.net>\r\n\
Content-Length: -999\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.4: scalar fields with overlarge values.
        (
            "scalar02",
            Expect::Refused,
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n\
To: <sip:user@example.com>\r\nFrom: <sip:user@example.com>;tag=239232jh3\r\n\
CSeq: 36893488147419103232 REGISTER\r\nCall-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\r\n\
Max-Forwards: 300\r\nExpires: 1000000000000000000000000000000\r\n\
Contact: <sip:user@host129.example.com>;expires=280297596632815\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.5: a response with an overlarge status code.
        (
            "scalarlg",
            Expect::Refused,
            "SIP/2.0 4294967301 better not break the receiver\r\nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n\
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3\r\nCSeq: 353494 INVITE\r\n\
From: <sip:user@example.com>;tag=39ansfi3\r\nTo: <sip:user@example.edu>;tag=902jndnke3\r\n\
Content-Length: 0\r\nContact: <sip:user@host.example.edu>\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.6: an unterminated quoted string in the display name.
        (
            "quotbal",
            Expect::Refused,
            "INVITE sip:user@example.com SIP/2.0\r\nTo: \"Mr. J. User <sip:j.user@example.com>\r\n\
From: sip:caller@example.net;tag=93334\r\nMax-Forwards: 10\r\nCall-ID: quotbal.aksdj\r\nContact: <sip:caller@host59.example.net>\r\n\
CSeq: 0 INVITE\r\nVia: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.7: `<>` enclosing the Request-URI.
        (
            "ltgtruri",
            Expect::Refused,
            "INVITE <sip:user@example.com> SIP/2.0\r\nTo: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=39291\r\nMax-Forwards: 23\r\nCall-ID: ltgtruri.1@192.0.2.5\r\nCSeq: 1 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.5\r\nContact: <sip:caller@host5.example.net>\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.8: whitespace inside the Request-URI.
        (
            "lwsruri",
            Expect::Refused,
            "INVITE sip:user@example.com; lr SIP/2.0\r\nTo: sip:user@example.com;tag=3xfe-9921883-z9f\r\n\
From: sip:caller@example.net;tag=231413434\r\nMax-Forwards: 5\r\nCall-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423\r\n\
CSeq: 2130706432 INVITE\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395\r\n\
Contact: <sip:caller@host1.example.net>\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.9: several spaces separating request-line elements.
        (
            "lwsstart",
            Expect::Refused,
            "INVITE  sip:user@example.com  SIP/2.0\r\nMax-Forwards: 8\r\nTo: sip:user@example.com\r\n\
From: sip:caller@example.net;tag=8814\r\nCall-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com\r\n\
CSeq: 1893884 INVITE\r\nVia: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923\r\n\
Contact: <sip:caller@host1.example.net>\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.10: SP characters at the end of the request line.
        (
            "trws",
            Expect::Refused,
            "OPTIONS sip:remote-target@example.com SIP/2.0  \r\nVia: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093\r\n\
To: <sip:remote-target@example.com>\r\nFrom: <sip:local-resource@example.com>;tag=329429089\r\n\
Call-ID: trws.oicu34958239neffasdhr2345r\r\nAccept: application/sdp\r\nCSeq: 238923 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.13: a failure to enclose a name-addr URI with parameters in `<>` (Contact).
        (
            "regbadct",
            Expect::Parses,
            "REGISTER sip:example.com SIP/2.0\r\nTo: sip:user@example.com\r\n\
From: sip:user@example.com;tag=998332\r\nMax-Forwards: 70\r\nCall-ID: regbadct.k345asrl3fdbv@10.0.0.1\r\n\
CSeq: 1 REGISTER\r\nVia: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw\r\n\
Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.15: a non-token character in the display name.
        (
            "baddn",
            Expect::Refused,
            "OPTIONS sip:t.watson@example.org SIP/2.0\r\nVia: SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\nFrom: Bell, Alexander <sip:a.g.bell@example.com>;tag=43\r\n\
To: Watson, Thomas <sip:t.watson@example.org>\r\nCall-ID: baddn.31415@c.example.com\r\n\
Accept: application/sdp\r\nCSeq: 3923239 OPTIONS\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.16: an unknown protocol version.
        (
            "badvers",
            Expect::Refused,
            "OPTIONS sip:t.watson@example.org SIP/7.0\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n\
Max-Forwards: 70\r\nFrom: A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\n\
To: T. Watson <sip:t.watson@example.org>\r\nCall-ID: badvers.31417@c.example.com\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.17: the start-line method and the CSeq method differ.
        (
            "mismatch01",
            Expect::Refused,
            "OPTIONS sip:user@example.com SIP/2.0\r\nTo: sip:j.user@example.com\r\n\
From: sip:caller@example.net;tag=34525\r\nMax-Forwards: 6\r\nCall-ID: mismatch01.dj0234sxdfl3\r\n\
CSeq: 8 INVITE\r\nVia: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.19: an overlarge response code.
        (
            "bigcode",
            Expect::Refused,
            "SIP/2.0 4294967301 better not break the receiver\r\nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\r\n\
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3\r\nCSeq: 353494 INVITE\r\n\
From: <sip:user@example.com>;tag=39ansfi3\r\nTo: <sip:user@example.edu>;tag=902jndnke3\r\n\
Content-Length: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.3.1: a request missing Call-ID, From and To.
        (
            "insuf",
            Expect::Refused,
            "INVITE sip:user@example.com SIP/2.0\r\nCSeq: 193942 INVITE\r\n\
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\nContent-Type: application/sdp\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.1.2.11 / multi01: several single-instance header fields.
        (
            "multi01",
            Expect::Refused,
            "INVITE sip:user@company.com SIP/2.0\r\nContact: <sip:caller@host25.example.net>\r\n\
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw\r\nMax-Forwards: 70\r\nCSeq: 5 INVITE\r\n\
Call-ID: multi01.98asdh@192.0.2.1\r\nCSeq: 59 INVITE\r\nCall-ID: multi01.98asdh@192.0.2.2\r\n\
From: sip:caller@example.com;tag=3413415\r\nTo: sip:user@example.com\r\nTo: sip:other@example.net\r\n\
From: sip:caller@example.net;tag=2923420123\r\nl: 0\r\n\r\n"
                .to_string(),
        ),
        // 3.4.2 / inv2543: an RFC 2543 style request without a branch still parses; the
        // transaction layer decides what to do with it.
        (
            "inv2543",
            Expect::Parses,
            "INVITE sip:UserB@example.com SIP/2.0\r\nVia: SIP/2.0/UDP iftgw.example.com\r\n\
From: <sip:+13035551111@ift.client.example.net;user=phone>\r\nRecord-Route: <sip:UserB@example.com;maddr=ss1.example.com>\r\n\
To: sip:+16505552222@ss1.example.net;user=phone\r\nCall-ID: inv2543.1717@ift.client.example.com\r\n\
CSeq: 56 INVITE\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        ),
    ]
}

/// Exercises every reader and the response builder, which must not panic either.
fn exercise(message: &SipMessage) {
    exercise_parser(&message.to_bytes());
}

#[test]
fn rfc_4475_messages_parse_or_are_refused_as_expected() {
    let mut wrong = Vec::new();
    for (name, expect, text) in torture_messages() {
        let result = SipMessage::parse(text.as_bytes());
        let got = if result.is_ok() {
            Expect::Parses
        } else {
            Expect::Refused
        };
        if let Ok(message) = &result {
            exercise(message);
        }
        if got != expect {
            wrong.push(format!("{name}: expected {expect:?}, got {result:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn wsinv_is_read_correctly_through_its_folding() {
    let (_, _, text) = torture_messages().remove(0);
    let message = SipMessage::parse(text.as_bytes()).unwrap();
    assert_eq!(message.max_forwards, Some(68));
    assert_eq!(message.cseq.seq, 9);
    assert_eq!(message.vias.len(), 3);
    assert_eq!(message.body.len(), 150);
    assert_eq!(message.to.tag.as_deref(), Some("1918181833n"));
}

#[test]
fn escnull_keeps_both_contacts() {
    let (_, _, text) = torture_messages().remove(2);
    let message = SipMessage::parse(text.as_bytes()).unwrap();
    let contacts = message.contacts().unwrap();
    assert_eq!(contacts.len(), 2);
    assert!(matches!(&contacts[1], Contact::Uri { uri, .. } if uri == "sip:%00%00@host5.example.com"));
}

fn valid_messages() -> Vec<String> {
    torture_messages()
        .into_iter()
        .filter(|(_, expect, _)| *expect == Expect::Parses)
        .map(|(_, _, text)| text)
        .chain([super::message::tests::REGISTER.to_string()])
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                Just(b"\r\n".to_vec()),
                Just(b",".to_vec()),
                Just(b"\"".to_vec()),
                Just(b";".to_vec()),
                Just(b"<".to_vec()),
                Just(b"\r\n ".to_vec()),
                Just(b":".to_vec()),
                Just("\u{440}".as_bytes().to_vec()),
            ]
        )
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Flip(at, b) => {
                if let Some(slot) = bytes.get_mut(at % len) {
                    *slot = *b;
                }
            }
            Mutation::Insert(at, ins) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise_parser(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        index in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let valid = valid_messages();
        let base = valid[index % valid.len()].clone().into_bytes();
        exercise_parser(&apply(base, &mutations));
    }
}
