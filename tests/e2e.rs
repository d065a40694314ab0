//! End to end as a user runs it: preprocess the bundled sample, then inspect batches with the trainer.

use maskrate_e2e::{data, run, run_ok};

#[test]
fn sample_shards_feed_inspect_batch_at_the_scheduled_rate() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    run_ok(
        "preprocess",
        &[&data("c4-sample"), &"--out", &shards, &"--quiet"],
    );
    let out = run_ok(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"linear:0.3:0.15",
            &"--steps",
            &"101",
            &"--step",
            &"50",
            &"--batch-size",
            &"64",
            &"--rows",
            &"2",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scheduled rate 0.2250"), "{text}");
    assert!(text.contains("--- row 1:"), "{text}");
    assert!(text.contains("[M:"), "masked tokens are shown: {text}");
    // Realised rate is printed and near the schedule (64 rows x ~120 maskable tokens).
    let realised: f64 = text
        .split(" = ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((realised - 0.225).abs() < 0.03, "{realised}");

    let plot = dir.path().join("rate.png");
    let out = run_ok(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"cosine:0.3:0.15",
            &"--steps",
            &"1000",
            &"--batch-size",
            &"32",
            &"--stats",
            &"--points",
            &"5",
            &"--plot",
            &plot,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("     999     0.1500"), "{text}");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // A malformed schedule is refused with the grammar.
    let bad = run(
        "trainer",
        &[
            &"inspect-batch",
            &"--shards",
            &shards,
            &"--schedule",
            &"cosine:1.5:0.1",
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("start rate 1.5 is outside (0, 1)") && err.contains("grammar"),
        "{err}"
    );
    // An unfinished shard directory is refused.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let bad = run("trainer", &[&"inspect-batch", &"--shards", &empty]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no manifest.json"));
}
