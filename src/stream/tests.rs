use super::*;

#[test]
fn validate_id_rules() {
    assert!(validate_id("a").is_ok());
    assert!(validate_id(&"é".repeat(127)).is_ok()); // 254 bytes
    assert!(validate_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
    for (id, reason) in [
        ("", "empty"),
        ("a\0b", "contains a NUL byte"),
        (&"x".repeat(MAX_ID_BYTES + 1), "longer than 255 bytes"),
        (&"é".repeat(128), "longer than 255 bytes"),
    ] {
        match validate_id(id) {
            Err(Error::InvalidId { reason: r }) => assert_eq!(r, reason),
            other => panic!("{id:?}: {other:?}"),
        }
    }
    assert!(id_from_bytes(&[0xC3]).is_err());
}

#[test]
fn format_detection_rule() {
    assert_eq!(Format::detect(&native::MAGIC), Some(Format::Native));
    assert_eq!(Format::detect(&[0, 0, 0, 2]), Some(Format::Qemu));
    assert_eq!(Format::detect(&[0, 0, 0]), None);
    assert_eq!(Format::detect(&native::MAGIC[..7]), None);
    assert_eq!(Format::detect(b"\x89PNG\r\n\x1a\n"), None);
    assert_eq!(Format::detect(b""), None);
}

#[test]
fn format_names() {
    for f in [Format::Native, Format::Qemu] {
        assert_eq!(f.to_string().parse::<Format>(), Ok(f));
    }
    let e = "Native".parse::<Format>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown stream format \"Native\" (expected \"native\" or \"qemu\")"
    );
}

#[test]
fn limits_default() {
    let l = Limits::default();
    assert_eq!((l.max_blob_bytes, l.max_helpers), (1 << 30, 1024));
}

#[test]
fn read_records_tells_the_formats_apart() {
    let records = vec![Record::new("a", b"1".to_vec()), Record::new("b", vec![])];
    for format in [Format::Native, Format::Qemu] {
        let mut bytes = Vec::new();
        write_records(&mut bytes, format, &records).unwrap();
        assert_eq!(Format::detect(&bytes), Some(format));
        let got = read_records(&bytes[..], Limits::default()).unwrap();
        assert_eq!(got, (format, records.clone()));
    }
    assert!(matches!(
        read_records(&b"\x89PNG"[..], Limits::default()),
        Err(Error::BadMagic)
    ));
    assert!(read_records(&b""[..], Limits::default())
        .unwrap_err()
        .is_truncated());
}

#[test]
fn error_classifiers() {
    let e = Error::corrupt(7, "x", Some("h"));
    assert_eq!((e.helper_id(), e.offset()), (Some("h"), Some(7)));
    assert_eq!(e.to_string(), "helper \"h\": corrupt stream at byte 7: x");
    let e = Error::corrupt(7, "x", None);
    assert_eq!(e.to_string(), "corrupt stream at byte 7: x");
    assert_eq!(Error::BadMagic.helper_id(), None);
}

#[test]
fn an_unrecognized_input_says_what_it_is() {
    let empty = Format::recognize(b"").unwrap_err();
    assert_eq!(empty.to_string(), "not a state stream: the input is empty");
    let other = Format::recognize(b"\x89PNG\r\n\x1a\n").unwrap_err();
    assert_eq!(
        other.to_string(),
        "not a state stream: its first 8 bytes are neither the native magic nor a QEMU payload"
    );
    assert_eq!(Format::recognize(&native::MAGIC).unwrap(), Format::Native);
}
