//! The fuzz targets' bodies: one function per parser of outside input, each taking
//! arbitrary bytes and required never to panic (errors are fine). `fuzz/` wraps each in a
//! libFuzzer target for `make fuzz`; the tests here replay the saved corpus and every
//! crash found so far on every `cargo test`, so a fixed crash stays fixed.

use std::sync::OnceLock;

use collective_core::{ChunkId, Role};
use collective_meta::Table;
use collective_pki::{CertInfo, InviteCode, IssueRequest, MemberCa, TokenVerifier};
use collective_proto::v1 as pb;
use prost::Message;

/// A target's body: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name `fuzz/fuzz_targets/<name>.rs` and the corpus use.
pub const TARGETS: &[(&str, Target)] = &[
    ("grpc_messages", grpc_messages),
    ("chunk_frames", chunk_frames),
    ("invite_codes", invite_codes),
    ("tokens", tokens),
    ("certificates", certificates),
    ("csrs", csrs),
    ("records", records),
    ("paths", paths),
];

macro_rules! decode_all {
    ($data:expr, $($t:ty),* $(,)?) => {
        $( let _ = <$t>::decode($data); )*
    };
}

/// Every request message of every gRPC method (what a server decodes from a caller).
pub fn grpc_messages(data: &[u8]) {
    decode_all!(
        data,
        pb::AuditRequest,
        pb::CommitFilesRequest,
        pb::CopyChunkRequest,
        pb::CreateDatastoreRequest,
        pb::DeleteChunksRequest,
        pb::EventsRequest,
        pb::ExchangeRequest,
        pb::GenerateInviteRequest,
        pb::GrantRequest,
        pb::HeartbeatRequest,
        pb::HostChunksRequest,
        pb::JoinMemberRequest,
        pb::ListChunksRequest,
        pb::ListDatastoresRequest,
        pb::ListInvitesRequest,
        pb::ListRequest,
        pb::MkdirRequest,
        pb::NodeRequest,
        pb::PathRequest,
        pb::PeersRequest,
        pb::PlanWriteRequest,
        pb::ReadPlanRequest,
        pb::ReadTokensRequest,
        pb::RedeemInviteRequest,
        pb::RegisterNodeRequest,
        pb::ReleaseChunksRequest,
        pb::RemoveRequest,
        pb::RenameRequest,
        pb::RepairStatusRequest,
        pb::ReplaceTargetRequest,
        pb::ReportBadReplicaRequest,
        pb::RevokeInviteRequest,
        pb::RevokeRequest,
        pb::RiskRequest,
        pb::SetAttrRequest,
        pb::StartScrubRequest,
        pb::StatusRequest,
        pb::SymlinkRequest,
        pb::UsageRequest,
        pb::VerifyChunkRequest,
    );
    // Responses too: a client decodes them from a server it may not trust (another member).
    decode_all!(
        data,
        pb::ReadPlanResponse,
        pb::PlanWriteResponse,
        pb::StatusResponse,
        pb::ExchangeResponse
    );
}

/// The QUIC chunk protocol: a stream of length-prefixed requests (node side) and responses
/// (client side).
pub fn chunk_frames(data: &[u8]) {
    for parse in [
        |b: &[u8]| collective_dataplane::decode_frame::<pb::ChunkRequest>(b).map(|(_, n)| n),
        |b: &[u8]| collective_dataplane::decode_frame::<pb::ChunkResponse>(b).map(|(_, n)| n),
    ] {
        let mut rest = data;
        while let Ok(n) = parse(rest) {
            assert!(n >= 4 && n <= rest.len(), "a frame claims {n} of {} bytes", rest.len());
            rest = &rest[n..];
        }
    }
}

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let key = CertInfo::from_pem(member_ca().cert_pem()).map(|i| i.public_key).unwrap_or_default();
        TokenVerifier::new(&key).unwrap_or_else(|e| panic!("the fuzzing CA's key: {e}"))
    })
}

/// Invite codes, as typed or pasted by a person (decoded by the invitee, verified by the
/// coordinator).
pub fn invite_codes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = InviteCode::decode(&text);
    let _ = InviteCode::verify(&text, verifier());
    let with_prefix = format!("{}{text}", collective_pki::INVITE_PREFIX);
    let _ = InviteCode::decode(&with_prefix);
}

/// Chunk tokens as a node receives them.
pub fn tokens(data: &[u8]) {
    if let Ok(t) = pb::SignedToken::decode(data) {
        let _ = verifier().verify(
            &t,
            pb::TokenOp::Get,
            &ChunkId::of(b"x"),
            "node-01@a.collective.local",
            "c@a.collective.local",
        );
    }
    let _ = pb::TokenClaims::decode(data);
}

/// Certificates presented by peers (DER) and read from files (PEM).
pub fn certificates(data: &[u8]) {
    if let Ok(info) = CertInfo::from_der(data) {
        let _ = info.principal();
        let _ = info.role();
    }
    let _ = collective_pki::peer_from_der(data);
    let _ = CertInfo::from_pem(&String::from_utf8_lossy(data));
}

fn member_ca() -> &'static MemberCa {
    static CA: OnceLock<MemberCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("collective-fuzz-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        MemberCa::init("fuzz", "fuzz.collective.local", &dir).unwrap_or_else(|e| panic!("a CA for fuzzing: {e}"))
    })
}

/// Certificate signing requests, as a coordinator receives them when redeeming an invite.
pub fn csrs(data: &[u8]) {
    let req = IssueRequest {
        role: Role::Client,
        name: "guest".into(),
        sans: vec![],
        not_before: None,
        not_after: None,
    };
    let _ = member_ca().sign_csr(&String::from_utf8_lossy(data), &req);
}

/// Every kind of on-disk metadata record (the first byte picks the table).
pub fn records(data: &[u8]) {
    // Every data table, and the change log.
    let tables: Vec<Table> = collective_meta::DATA_TABLES.iter().copied().chain([Table::Changes]).collect();
    let Some((&which, rest)) = data.split_first() else { return };
    let table = tables[which as usize % tables.len()];
    let _ = collective_meta::decode_record(table, b"totals", rest);
    let _ = collective_meta::decode_record(table, b"next_inode", rest);
}

/// Paths given to the CLI, the mount and every metadata call.
pub fn paths(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = collective_core::validate_path(&text) {
        let again = collective_core::validate_path(p.as_str()).unwrap_or_else(|e| panic!("{p} validated once, then not: {e}"));
        assert_eq!(again.as_str(), p.as_str(), "validation is not idempotent");
        let _ = p.split_last();
    }
}

/// Valid examples of every input, to start fuzzing from: `(target, bytes)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use rustls_pki_types::pem::PemObject;
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let req = |role, name: &str| IssueRequest {
        role,
        name: name.into(),
        sans: vec!["127.0.0.1".into()],
        not_before: None,
        not_after: None,
    };
    let ca = member_ca();
    let Ok(issued) = ca.issue(&req(Role::Coordinator, "coordinator")) else {
        return out;
    };
    out.push(("certificates", issued.chain_pem.clone().into_bytes()));
    if let Ok(der) = rustls_pki_types::CertificateDer::from_pem_slice(issued.chain_pem.as_bytes()) {
        out.push(("certificates", der.to_vec()));
    }
    if let Ok((_, csr)) = collective_pki::new_csr("guest@fuzz.collective.local") {
        out.push(("csrs", csr.into_bytes()));
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).map(|k| k.secret_der().to_vec());
    if let Ok(signer) = key.and_then(|k| {
        collective_pki::TokenSigner::from_pkcs8(&k, "coordinator@fuzz.collective.local".into())
            .map_err(|_| rustls_pki_types::pem::Error::NoItemsFound)
    }) {
        let id = ChunkId::of(b"seed");
        let token = signer.sign(
            pb::TokenOp::Get,
            &id,
            &["node-01@fuzz.collective.local".into()],
            "c@fuzz.collective.local",
            4,
            std::time::Duration::from_secs(60),
        );
        out.push(("tokens", token));
        let code = InviteCode {
            id: [3; 16],
            kind: collective_pki::InviteCodeKind::User,
            federation: "collective.local".into(),
            coordinator: "coordinator@fuzz.collective.local".into(),
            addr: "127.0.0.1:7000".into(),
            fingerprint: [9; 32],
            expires_ms: 1 << 42,
        };
        out.push(("invite_codes", code.encode(&signer).into_bytes()));
    }
    let plan = pb::PlanWriteRequest {
        chunks: vec![pb::ChunkDesc {
            id: vec![1; 32].into(),
            size: 4096,
        }],
        path: "/media/film.mkv".into(),
    };
    out.push(("grpc_messages", plan.encode_to_vec()));
    let commit = pb::CommitFilesRequest {
        files: vec![pb::FileCommit {
            path: "/a/b".into(),
            size: 3,
            mode: 0o644,
            mtime_ms: 1,
            chunks: vec![pb::ChunkRef {
                id: vec![2; 32].into(),
                offset: 0,
                size: 3,
                stored_on: vec!["node-01@fuzz.collective.local".into()],
                seal: Default::default(),
            }],
            parents: true,
        }],
    };
    out.push(("grpc_messages", commit.encode_to_vec()));
    let frame = |m: &dyn Fn() -> Vec<u8>| {
        let body = m();
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend(body);
        f
    };
    let get = pb::ChunkRequest {
        op: pb::ChunkOp::Get as i32,
        chunk_id: vec![5; 32].into(),
        version: 1,
        ..Default::default()
    };
    let mut two = frame(&|| get.encode_to_vec());
    two.extend(frame(&|| pb::ChunkResponse::default().encode_to_vec()));
    out.push(("chunk_frames", two));
    for (table, value) in [
        (3u8, vec![1u8, 1, 5, 0]),
        (4, vec![2, 10, 1, 0, 0, 0]),
        (7, vec![2, 0]),
        (14, vec![1, 3, b'/', b'a', b'b']),
    ] {
        let mut r = vec![table];
        r.extend(value);
        out.push(("records", r));
    }
    for p in ["/", "/media/films/a.mkv", "/a/../b", "//x", "/\u{0}", "/é/ü"] {
        out.push(("paths", p.as_bytes().to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fuzz_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
    }

    /// Every saved input (corpus seeds and past crashes) of every target runs without a panic.
    #[test]
    fn every_saved_corpus_input_and_past_crash_parses_without_panicking() {
        let mut ran = 0;
        for (name, target) in TARGETS {
            assert!(
                fuzz_dir().join("fuzz_targets").join(format!("{name}.rs")).exists(),
                "fuzz/fuzz_targets/{name}.rs is missing"
            );
            for sub in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz_dir().join(sub).join(name)) else {
                    continue;
                };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).unwrap_or_default();
                    target(&data);
                    ran += 1;
                }
            }
        }
        for (name, data) in seeds() {
            let (_, target) = TARGETS
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("seed for unknown target {name}"));
            target(&data);
            ran += 1;
        }
        let seeded: std::collections::HashSet<&str> = seeds().into_iter().map(|(n, _)| n).collect();
        assert_eq!(seeded.len(), TARGETS.len(), "every target has seeds: {seeded:?}");
        assert!(ran > TARGETS.len());
    }

    /// `make fuzz` runs this first, so every target starts from valid examples.
    #[test]
    #[ignore = "writes the seed corpus; run by scripts/fuzz.sh"]
    fn write_seed_corpus() {
        for (i, (name, data)) in seeds().into_iter().enumerate() {
            let dir = fuzz_dir().join("corpus").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
        }
    }

    /// Short deterministic mutation runs of every target, so `cargo test` exercises them
    /// even where libFuzzer is not installed.
    #[test]
    fn every_target_survives_seeded_random_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (_, target) in TARGETS {
            for _ in 0..300 {
                let len = (next() % 600) as usize;
                let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                target(&data);
            }
        }
    }
}
