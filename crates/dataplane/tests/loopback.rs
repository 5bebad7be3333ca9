//! Chunk connections between two processes on one machine use datagrams sized for the
//! loopback device, not for Ethernet: a real QUIC endpoint and client with real
//! certificates on 127.0.0.1.

use std::path::PathBuf;

use bytes::Bytes;
use collective_core::{ChunkId, Role};
use collective_dataplane::{ChunkClient, ChunkServer, NodeTarget, read_frame, read_payload, write_frame};
use collective_pki::{IssueRequest, MemberCa, TlsIdentity};
use collective_proto::v1::{ChunkRequest, ChunkResponse, ChunkStatus};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("collective-dataplane-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn identity(ca: &MemberCa, dir: &std::path::Path, role: Role, name: &str) -> TlsIdentity {
    let req = IssueRequest {
        role,
        name: name.into(),
        sans: vec!["127.0.0.1".into()],
        not_before: None,
        not_after: None,
    };
    let out = dir.join(name);
    let (cert, key) = ca.issue_to(&req, &out).unwrap();
    TlsIdentity::load(&dir.join("ca.crt"), &cert, &key).unwrap()
}

/// A scratch member CA with a node and a client identity of it.
fn member(name: &str) -> (PathBuf, TlsIdentity, TlsIdentity) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = scratch(name);
    let ca = MemberCa::init("alice", "alice.collective.local", &dir).unwrap();
    let node = identity(&ca, &dir, Role::Node, "node-01");
    let client = identity(&ca, &dir, Role::Client, "carol");
    (dir, node, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_between_processes_on_one_machine_travel_in_64_kib_datagrams() {
    let (dir, node, client) = member("loopback");

    let server = ChunkServer::bind(&node, ([127, 0, 0, 1], 0).into()).unwrap();
    let addr = server.endpoint.local_addr().unwrap();
    // A minimal node: takes one put, answers OK, and reports what the connection carried.
    let served = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let req: ChunkRequest = read_frame(&mut recv).await.unwrap();
        let data = read_payload(&mut recv, req.size).await.unwrap();
        let ok = ChunkResponse {
            status: ChunkStatus::Ok as i32,
            message: String::new(),
            size: 0,
        };
        write_frame(&mut send, &ok).await.unwrap();
        let _ = send.finish();
        let _ = send.stopped().await;
        let stats = conn.stats();
        (data, stats.path.current_mtu, stats.udp_rx.bytes, stats.udp_rx.datagrams)
    });

    let chunks = ChunkClient::new(&client).unwrap();
    let data: Bytes = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into();
    let id = ChunkId::of(&data);
    let target = NodeTarget {
        node: "node-01@alice.collective.local".into(),
        addr,
    };
    // Sent in the uneven pieces it might have been read into: the node gets them as one.
    let pieces = [data.slice(..1 << 20), data.slice(1 << 20..3_000_001), data.slice(3_000_001..)];
    chunks.put(&target, &id, &pieces, &[]).await.unwrap();
    chunks.close().await;

    let (received, mtu, bytes, datagrams) = served.await.unwrap();
    assert!(received == data, "the chunk arrived intact");
    assert!(mtu > 60_000, "path MTU {mtu}: a loopback connection should use the loopback MTU");
    let average = bytes / datagrams.max(1);
    assert!(
        average > 16_000,
        "{datagrams} datagrams for {bytes} bytes ({average} bytes each): the payload should travel in large datagrams"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Streams a chunk in pieces of at most 64 KiB; returns the bytes and how it ended.
async fn stream_all(chunks: &ChunkClient, target: &NodeTarget, id: &ChunkId) -> (Vec<u8>, Result<(), collective_dataplane::DataError>) {
    // (A reset may overtake the node's answer itself.)
    let mut incoming = match chunks.get_stream(target, id, &[]).await {
        Ok(i) => i,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut got = Vec::new();
    loop {
        match incoming.next(64 << 10).await {
            Ok(Some(piece)) => {
                assert!(piece.len() <= 64 << 10, "a piece of {} bytes", piece.len());
                got.extend_from_slice(&piece);
            }
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// What the minimal node of the streaming test does with one get.
#[derive(Clone, Copy)]
enum Serve {
    Intact,
    /// The bytes with one of them flipped.
    Flipped,
    /// Half the bytes, then a reset saying the node found its copy corrupt.
    FoundCorrupt,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_gets_vouch_for_a_chunk_only_once_all_of_it_matches_its_id() {
    let (dir, node, client) = member("streamed");

    let data: Bytes = (0..3_000_001u32).map(|i| (i * 17 % 241) as u8).collect::<Vec<u8>>().into();
    let id = ChunkId::of(&data);
    let plan = [Serve::Intact, Serve::Flipped, Serve::FoundCorrupt, Serve::FoundCorrupt];
    let server = ChunkServer::bind(&node, ([127, 0, 0, 1], 0).into()).unwrap();
    let addr = server.endpoint.local_addr().unwrap();
    let served = {
        let data = data.clone();
        tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            for serve in plan {
                let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                let _: ChunkRequest = read_frame(&mut recv).await.unwrap();
                let ok = ChunkResponse {
                    status: ChunkStatus::Ok as i32,
                    message: String::new(),
                    size: data.len() as u64,
                };
                write_frame(&mut send, &ok).await.unwrap();
                match serve {
                    Serve::Intact => send.write_chunk(data.clone()).await.unwrap(),
                    Serve::Flipped => {
                        let mut bad = data.to_vec();
                        bad[1_234_567] ^= 0x20;
                        send.write_chunk(bad.into()).await.unwrap();
                    }
                    Serve::FoundCorrupt => {
                        send.write_chunk(data.slice(..data.len() / 2)).await.unwrap();
                        let _ = send.reset(collective_dataplane::RESET_CORRUPT.into());
                        continue;
                    }
                }
                let _ = send.finish();
            }
            conn.closed().await;
        })
    };

    let chunks = ChunkClient::new(&client).unwrap();
    let target = NodeTarget {
        node: "node-01@alice.collective.local".into(),
        addr,
    };
    let (got, end) = stream_all(&chunks, &target, &id).await;
    assert!(end.is_ok(), "intact chunk: {end:?}");
    assert!(got == data, "the pieces make the chunk");

    let (got, end) = stream_all(&chunks, &target, &id).await;
    assert_eq!(got.len(), data.len(), "every byte of the flipped copy came");
    let e = end.expect_err("a flipped byte must fail the stream at its end");
    assert!(matches!(e, collective_dataplane::DataError::Mismatch { .. }), "{e}");
    assert!(e.is_bad_replica());

    let (_, end) = stream_all(&chunks, &target, &id).await;
    let e = end.expect_err("a reset stream must fail");
    assert!(matches!(e, collective_dataplane::DataError::Corrupt { .. }), "{e}");
    assert!(e.is_bad_replica(), "a copy the node found corrupt is reported");

    // A whole-chunk get tells the same reset apart as well.
    let e = chunks.get(&target, &id, &[]).await.expect_err("a reset stream must fail");
    assert!(matches!(e, collective_dataplane::DataError::Corrupt { .. }), "{e}");

    chunks.close().await;
    served.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
