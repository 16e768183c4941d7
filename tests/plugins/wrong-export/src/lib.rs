//! A component that is valid but exports `acme:other/thing` instead of the
//! switchboard channel interface: the daemon must refuse it and say so.
wit_bindgen::generate!({
    inline: "
        package acme:other;
        interface thing { hello: func() -> string; }
        world other { export thing; }
    ",
    world: "other",
});

struct Other;
impl exports::acme::other::thing::Guest for Other {
    fn hello() -> String {
        "hello".into()
    }
}
export!(Other);
