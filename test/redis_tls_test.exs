defmodule Yggdrasil.RedisTLSTest do
  # The scenarios every broker adapter passes (Yggdrasil.Test.BrokerCase),
  # against a redis-server that speaks TLS only (spec section 10.1), redis-cli on the
  # other side over TLS too: every server a scenario starts or restarts is a
  # TLS one, and each namespace gets tls: true and the test CA.
  #
  # Tagged :tls_adapter (`mix test --only tls_adapter` runs every TLS test).
  use Yggdrasil.Test.BrokerCase,
    peer: Yggdrasil.Test.RedisCli,
    tls: true,
    moduletag: :tls_adapter
end
