//! Bodies split into events, batch bodies, the streaming pass and its fallback.

use super::*;

#[test]
fn bodies_split_into_events() {
    let one = br#"{"name":"x"}"#;
    assert_eq!(parse_body(one).unwrap().len(), 1);
    let many = br#"{"events":[{"name":"a"},{"name":"b"},5]}"#;
    let Events::Raw(evs) = parse_body(many).unwrap() else {
        panic!("a non-object event sends the body down the event-by-event path")
    };
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[2].get(), "5");
    // A non-object event is a per-event error, never a batch failure.
    let errs = Processor::new(NOW)
        .prepare(evs[2].get(), &mut Arena::default())
        .unwrap_err();
    assert_eq!(errs[0].field, "");
    assert!(errs[0].message.contains("JSON object"), "{errs:?}");

    // An event that repeats a field (an alias and its name) is rejected alone.
    let body = format!(
        r#"{{"events":[{{"name":"a","timestamp":"2026-08-20T14:00:00Z","eventTime":"2026-08-20T14:00:00Z"}},{}]}}"#,
        base()
    );
    let events = parse_body(body.as_bytes()).unwrap();
    assert!(matches!(events, Events::Raw(_)));
    let mut p = Processor::new(NOW);
    let mut arena = Arena::default();
    let errs = p.prepare_nth(&events, 0, &mut arena).unwrap_err();
    assert!(errs[0].message.contains("duplicate field"), "{errs:?}");
    assert!(p.prepare_nth(&events, 1, &mut arena).is_ok());

    for (body, status, code) in [
        (&b"{\"events\":[{]}"[..], 400, "invalid_json"),
        (b"not json", 400, "invalid_json"),
        (b"[1,2]", 400, "invalid_json"),
        (b"{\"events\":[]}", 400, "invalid_request"),
        (b"{\"events\":{}}", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
    ] {
        let e = parse_body(body).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (status, code),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let big = format!("{{\"events\":[{}]}}", vec!["{}"; MAX_EVENTS + 1].join(","));
    assert_eq!(parse_body(big.as_bytes()).unwrap_err().status, 413);
}

#[test]
fn batch_body_joins_written_events() {
    let mut arena = Arena::default();
    let mut p = Processor::new(NOW);
    let a = p.prepare(&base().to_string(), &mut arena).unwrap();
    let b = p
        .prepare(
            &with(base(), json!({"name": "Second"})).to_string(),
            &mut arena,
        )
        .unwrap();
    let body = batch_body([arena.event(&a), arena.event(&b)], arena.json.len());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    assert_eq!(v["events"][1]["eventDescription"]["name"], "Second");
}

#[test]
fn the_streaming_pass_gives_one_outcome_per_index() {
    let ok = base();
    let bad = with(base(), json!({"countryCode": "Atlantis"}));
    let body = format!(r#"{{"events":[{ok},{bad},5,"x",{ok}],"other":1}}"#);
    let mut arena = Arena::default();
    let out = prepare_body(body.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out[0].is_ok() && out[4].is_ok());
    assert_eq!(fields(out[1].as_ref().unwrap_err()), ["countryCode"]);
    for i in [2, 3] {
        let errs = out[i].as_ref().unwrap_err();
        assert_eq!(errs[0].field, "");
        assert!(errs[0].message.contains("JSON object"), "{errs:?}");
    }
    // Only the two valid events were written, back to back.
    let (a, b) = (out[0].as_ref().unwrap(), out[4].as_ref().unwrap());
    assert_eq!((a.event.start, a.event.end), (0, b.event.start));
    assert_eq!(b.event.end, arena.json.len());
}

#[test]
fn a_body_the_streaming_pass_cannot_read_falls_back_without_leftovers() {
    // The second event repeats a field: the streaming pass gives up after writing the first
    // event; the event-by-event path must start from a clean arena.
    let body = format!(
        r#"{{"events":[{},{{"name":"a","timestamp":"2026-08-20T14:00:00Z","eventTime":"2026-08-20T14:00:00Z"}},{}]}}"#,
        base(),
        with(base(), json!({"name": "Third"}))
    );
    let mut arena = Arena::default();
    let out = prepare_body(body.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 3);
    assert!(
        out[1].as_ref().unwrap_err()[0]
            .message
            .contains("duplicate field")
    );
    let (a, c) = (out[0].as_ref().unwrap(), out[2].as_ref().unwrap());
    assert_eq!((a.event.start, a.event.end), (0, c.event.start));
    assert_eq!(c.event.end, arena.json.len());
    let third: Value = serde_json::from_slice(arena.event(c)).unwrap();
    assert_eq!(third["eventDescription"]["name"], "Third");

    // One bare event, and body-level problems, as on the parse_body path.
    let one = base().to_string();
    let out = prepare_body(one.as_bytes(), &mut Processor::new(NOW), &mut arena).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].is_ok());
    for (body, status) in [
        (&b"{\"events\":[]}"[..], 400),
        (b"{\"events\":[{]}", 400),
        (b"{\"events\":[{}]} trailing", 400),
        (b"{\"events\":[\"\xff\"]}", 400),
    ] {
        let e = prepare_body(body, &mut Processor::new(NOW), &mut Arena::default()).unwrap_err();
        assert_eq!(e.status, status, "{}", String::from_utf8_lossy(body));
    }
    let big = format!("{{\"events\":[{}]}}", vec!["{}"; MAX_EVENTS + 1].join(","));
    let e = prepare_body(
        big.as_bytes(),
        &mut Processor::new(NOW),
        &mut Arena::default(),
    )
    .unwrap_err();
    assert_eq!(e.status, 413);
    assert!(e.message.contains("10001 events"), "{}", e.message);
}

#[test]
fn events_without_an_id_get_a_generated_event_id_when_asked() {
    let no_id = serde_json::to_string(&base()).unwrap();
    let with_id =
        serde_json::to_string(&with(base(), json!({"clientDedupeId": "order-1"}))).unwrap();
    let mut arena = Arena::default();
    let mut p = Processor::new(NOW).with_generated_ids();
    let a = p.prepare(&no_id, &mut arena).unwrap();
    let b = p.prepare(&no_id, &mut arena).unwrap();
    let c = p.prepare(&with_id, &mut arena).unwrap();
    for x in [&a, &b] {
        assert!(x.generated_id);
        let id = arena.id(x).unwrap();
        assert!(id.starts_with(GENERATED_ID_PREFIX), "{id}");
        assert_eq!(id.len(), GENERATED_ID_PREFIX.len() + 32, "{id}");
        assert!(
            id[GENERATED_ID_PREFIX.len()..]
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
        let out: Value = serde_json::from_slice(arena.event(x)).unwrap();
        assert_eq!(out["eventId"], id, "the generated id goes out as eventId");
    }
    assert_ne!(arena.id(&a), arena.id(&b), "every event gets its own id");
    // A caller's id is kept as it is and is not marked generated.
    assert!(!c.generated_id);
    assert_eq!(arena.id(&c), Some("order-1"));
    let out: Value = serde_json::from_slice(arena.event(&c)).unwrap();
    assert_eq!(out["eventId"], "order-1");
    // Without the option (the default) nothing is generated.
    let mut arena = Arena::default();
    let d = Processor::new(NOW).prepare(&no_id, &mut arena).unwrap();
    assert!(!d.generated_id);
    assert_eq!(arena.id(&d), None);
    let out: Value = serde_json::from_slice(arena.event(&d)).unwrap();
    assert!(out.get("eventId").is_none());
}
