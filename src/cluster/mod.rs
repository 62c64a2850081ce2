//! The cluster side: (settings, user) → the objects a user's namespace holds
//! (`desired`, `templates`, `kinds`), and the one edge that talks to the API
//! server (`apply`), with what to delete (`prune`), whose a namespace is
//! (`owner`), failing fast while a server is down (`outage`) and `render`.

pub mod apply;
pub mod desired;
pub mod kinds;
pub mod outage;
pub mod owner;
pub mod prune;
pub mod render;
pub mod templates;
