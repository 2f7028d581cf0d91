//! End to end: `endless-model world` renders a prompt with a mid-clip steer to MP4 through
//! GStreamer and to a contact sheet; we decode what it wrote and check it against the world.

use endless_model::world::{Attributes, Camera, Scenery, TimeOfDay, Timeline, Weather, World};
use endless_tests::{binary, decode_file, mean_rgb, psnr};
use std::process::Command;

#[test]
fn world_cli_writes_a_decodable_mp4_and_contact_sheet() {
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("clip.mp4");
    let sheet = dir.path().join("sheet.png");
    let out = Command::new(binary("endless-model"))
        .args(["world", "--prompt", "a snowy night over the mountains, camera drifting left"])
        .args(["--then", "2:sunset over the ocean", "--transition", "1"])
        .args(["--seconds", "5", "--fps", "10", "--size", "160x90", "--seed", "3"])
        .arg("--out")
        .arg(&mp4)
        .arg("--contact-sheet")
        .arg(&sheet)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("night/snow/mountains/pan_left"), "{stdout}");
    assert!(stdout.contains("sunset/snow/ocean/pan_left"), "steering keeps unmentioned attributes: {stdout}");

    // Every frame is there, at 10 fps, in order.
    let frames = decode_file(&mp4);
    assert_eq!(frames.len(), 50);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.width, f.height), (160, 90));
        assert_eq!(f.pts, i as u64 * 100_000_000, "frame {i}");
    }

    // The decoded video is the world's picture (H.264 loses a little).
    let mut timeline = Timeline::new(Attributes {
        time: TimeOfDay::Night,
        weather: Weather::Snow,
        scenery: Scenery::Mountains,
        camera: Camera::PanLeft,
    });
    timeline.push(2.0, 1.0, Attributes { time: TimeOfDay::Sunset, scenery: Scenery::Ocean, ..timeline.target() });
    let world = World::new(3);
    for i in [0, 25, 49] {
        let expected = world.frame(&timeline.state_at(i as f64 / 10.0), 160, 90);
        let db = psnr(&frames[i].rgb, &expected);
        assert!(db > 28.0, "frame {i}: PSNR {db:.1} dB");
    }

    // The steer shows: the night is dark and blue, the sunset bright and warm.
    let night = mean_rgb(&frames[5].rgb);
    let sunset = mean_rgb(&frames[45].rgb);
    assert!(night.iter().sum::<f64>() < 0.6 * sunset.iter().sum::<f64>(), "{night:?} vs {sunset:?}");
    assert!(night[2] > night[0], "night is blue: {night:?}");
    assert!(sunset[0] > sunset[2] + 30.0, "sunset is warm: {sunset:?}");

    // The contact sheet is a 4×3 grid of frames with 4-pixel borders.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&sheet).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (4 * 164 + 4, 3 * 94 + 4));
}

#[test]
fn world_cli_refuses_bad_arguments_clearly() {
    let out = Command::new(binary("endless-model"))
        .args(["world", "--prompt", "hills", "--size", "161x90", "--contact-sheet", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("even"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(binary("endless-model")).args(["world", "--prompt", "hills"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to write"));
}

#[test]
fn endless_config_reports_bad_settings_by_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"127.0.0.1:8080\"\n\n[sessions]\nfps = 1000\n").unwrap();
    let out = Command::new(binary("endless")).arg("--config").arg(&bad).arg("config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:5: `sessions.fps`: 1000 is out of range 1..=120"), "{err}");
    // The shipped file loads, and a flag overrides it.
    let config = endless_tests::repo_path("config.toml");
    let out =
        Command::new(binary("endless")).arg("--config").arg(&config).args(["--fps", "24", "config"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fps = 24"));
}
