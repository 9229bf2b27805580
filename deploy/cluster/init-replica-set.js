// Run by the rs-init service: makes db1..db3 the replica set "rs0" unless it already is one,
// and waits until it has a primary.
try {
  rs.status();
  print("replica set rs0 already initiated");
} catch (e) {
  rs.initiate({
    _id: "rs0",
    members: [
      { _id: 0, host: "db1:27017" },
      { _id: 1, host: "db2:27017" },
      { _id: 2, host: "db3:27017" },
    ],
  });
  print("replica set rs0 initiated");
}
for (let i = 0; i < 120; i++) {
  if (db.hello().isWritablePrimary || db.hello().primary) {
    print("primary: " + db.hello().primary);
    quit(0);
  }
  sleep(1000);
}
print("no primary after 120 s");
quit(1);
