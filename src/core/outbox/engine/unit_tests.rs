use super::*;

#[test]
fn counts_add_and_merge_by_outcome() {
    let mut a = Counts::default();
    a.add(Recorded::Delivered);
    a.add(Recorded::Delivered);
    a.add(Recorded::HandlerError);
    let mut b = Counts::default();
    b.add(Recorded::Retry);
    b.merge(&a);
    assert_eq!(b.get(Recorded::Delivered), 2);
    assert_eq!(b.get(Recorded::Retry), 1);
    assert_eq!(b.get(Recorded::HandlerError), 1);
    assert_eq!(b.get(Recorded::Dead), 0);
    let j = b.to_json();
    assert_eq!(j["delivered"], 2);
    assert_eq!(j["handler_error"], 1);
    assert_eq!(j.len(), 6);
}

#[test]
fn a_summary_names_every_outcome() {
    let s = Summary {
        transport: Some(Transport::Native),
        rounds: 2,
        claimed: 3,
        ..Default::default()
    };
    let v = s.to_json();
    assert_eq!(v["transport"], "native");
    assert_eq!(v["claimed"], 3);
    for r in Recorded::ALL {
        assert_eq!(v[r.as_str()], 0);
    }
}
