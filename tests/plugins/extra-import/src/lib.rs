//! A component that imports `acme:missing/api`, which the host does not
//! provide: the daemon must refuse it and name the import.
wit_bindgen::generate!({
    inline: "
        package acme:missing;
        interface api { ping: func() -> u32; }
        interface thing { hello: func() -> u32; }
        world needs-more { import api; export thing; }
    ",
    world: "needs-more",
});

struct Needy;
impl exports::acme::missing::thing::Guest for Needy {
    fn hello() -> u32 {
        acme::missing::api::ping()
    }
}
export!(Needy);
