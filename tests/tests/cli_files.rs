//! The `chat` CLI sends a file through the router to a user on another node, who fetches it:
//! the same bytes, checked against their SHA-256.

use chat_tests::*;

#[tokio::test]
async fn a_file_sent_with_the_cli_is_fetched_byte_for_byte() {
    let cluster = TestCluster::start(&[]);
    let router = cluster.start_router();
    let alice = cluster.users_on("n1", "alice", 1).remove(0);
    let bob = cluster.users_on("n2", "bob", 1).remove(0);
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("beach.jpg");
    let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let url = router.ws_url();
    let photo_s = photo.display().to_string();
    let (ok, out, err) = tokio::task::spawn_blocking({
        let (t, url, bob) = (token(&alice, "cli"), url.clone(), bob.clone());
        move || {
            chat_cli(
                &t,
                &[
                    "--url",
                    &url,
                    "send",
                    "--to",
                    &bob,
                    "--file",
                    &photo_s,
                    "the beach",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "send failed: {out}\n{err}");
    assert!(out.contains("✓ sent"), "{out}");
    assert!(err.contains("MB/s"), "{err}");

    let got = dir.path().join("got.jpg");
    let got_s = got.display().to_string();
    let tb = token(&bob, "cli");
    // The message may still be on its way to bob's node: fetch until it is there.
    wait_until_async("bob's fetch", WAIT, async || {
        let (t, url, got_s) = (tb.clone(), url.clone(), got_s.clone());
        tokio::task::spawn_blocking(move || {
            chat_cli(&t, &["--url", &url, "fetch", "--seq", "1", "--out", &got_s])
        })
        .await
        .unwrap()
        .0
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    // The history line names the file.
    let (ok, out, _) =
        tokio::task::spawn_blocking(move || chat_cli(&tb, &["--url", &url, "history"]))
            .await
            .unwrap();
    assert!(ok);
    assert!(
        out.contains("the beach [file beach.jpg (image/jpeg, 2000000 bytes): chat fetch --seq 1]"),
        "{out}"
    );
}
