//! Reference parsing never panics, and what it accepts prints back to an equal reference.
#![no_main]

use keyhole_contract::reference::parse_keyhole;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, reference) = text.split_once('\n').unwrap_or(("NAME", &text));
    if let Ok(parsed) = parse_keyhole(name, reference) {
        let mut printed = parsed.source.to_string();
        if !parsed.file {
            printed = match printed.split_once('#') {
                Some((head, field)) if head.contains('?') => format!("{head}&file=false#{field}"),
                Some((head, field)) => format!("{head}?file=false#{field}"),
                None if printed.contains('?') => format!("{printed}&file=false"),
                None => format!("{printed}?file=false"),
            };
        }
        let again = parse_keyhole(name, &printed).expect("a printed reference parses");
        assert_eq!(again, parsed);
    }
});
