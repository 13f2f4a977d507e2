defmodule Yggdrasil.UserErrorsTest do
  # Issue 10 point 5: the mistakes users make get an error that says what
  # is wrong. Two of them need a VM of their own (the application never
  # started; no NIF library), run as a separate `elixir` process.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import Yggdrasil.Test.Helpers, only: [run_elixir: 1, run_elixir: 2, copy_app: 1]

  alias Yggdrasil.Channel

  test "before the application is started, errors say so and how to start it" do
    out =
      run_elixir("""
      show = &IO.puts(&1 <> ": " <> inspect(&2, width: :infinity))
      show.("gen_channel", Yggdrasil.gen_channel(name: "x"))
      show.("subscribe", Yggdrasil.subscribe(name: "x"))
      show.("publish", Yggdrasil.publish([name: "x"], "m"))
      """)

    for call <- ~w(gen_channel subscribe publish) do
      assert out =~ ~r/#{call}: {:error, "[^"]*not started[^"]*ensure_all_started\(:yggdrasil\)/,
             out
    end
  end

  test "a broker name or publish options holding one binary in many places: an error, no copies" do
    # 4,096 references to one 64 MB binary: 256 GB once each is copied.
    big = :binary.copy("x", 64 * 1024 * 1024)
    name = List.to_tuple(List.duplicate(big, 4096))
    assert {:error, reason} = Yggdrasil.publish([name: name, adapter: :rabbitmq], "m")
    assert reason =~ "exchange"

    headers = Map.new(1..100, &{"h#{&1}", binary_part(big, 0, 1024 * 1024)})
    channel = [name: {"amq.topic", "budget"}, adapter: :rabbitmq]
    assert {:error, reason} = Yggdrasil.publish(channel, "m", headers: headers)
    assert reason =~ "more than 4096 items or 1048576 bytes in all"
  end

  test "the application started, an unknown adapter's error does not mention starting it" do
    assert {:error, message} = Yggdrasil.gen_channel(name: "x", adapter: :no_such_adapter)
    assert message == "Yggdrasil adapter: no_such_adapter not loaded"
  end

  test "without the NIF library the application refuses to start with one clear error" do
    # A copy of the compiled application whose priv/native has no library.
    app = copy_app(false)

    out =
      run_elixir(
        """
        IO.inspect(Application.ensure_all_started(:yggdrasil), label: "start")
        IO.inspect(Yggdrasil.Native.info(), label: "info")
        """,
        Path.join(app, "ebin")
      )

    assert out =~ ~r/start: {:error,\s*{:yggdrasil,/, out
    assert out =~ "could not load the native engine from #{app}/priv/native/libyggdrasil_nif.so"
    assert out =~ "mix compile"
    refute out =~ "UndefinedFunctionError", out
    refute out =~ "on_load", out
    # A direct call to the engine says it is not loaded, too.
    assert out =~ "native engine not loaded", out
  end

  describe "unknown channel keys" do
    test "are ignored as in Yggdrasil 6, and logged once per distinct key" do
      typo = :"nam_#{System.unique_integer([:positive])}"
      other = :"adaptor_#{System.unique_integer([:positive])}"

      log =
        capture_log(fn ->
          assert {:ok, %Channel{name: nil}} = Yggdrasil.gen_channel([{typo, "x"}])
          assert {:ok, %Channel{name: "y"}} = Yggdrasil.gen_channel([{typo, "x"}, name: "y"])
          assert {:ok, %Channel{}} = Yggdrasil.gen_channel(%{typo => "x", other => :redis})
          assert :ok = Yggdrasil.subscribe([{other, :redis}, name: {:typo, typo}])
        end)

      assert length(String.split(log, inspect(typo))) == 2, log
      assert length(String.split(log, inspect(other))) == 2, log
      assert log =~ "[warning]"
      assert log =~ "not a channel field"
    end

    test "channel fields and structs log nothing" do
      log =
        capture_log(fn ->
          {:ok, channel} = Yggdrasil.gen_channel(name: "fields", adapter: :elixir, metadata: 1)
          {:ok, _} = Yggdrasil.gen_channel(%{name: "map", transformer: :json})
          :ok = Yggdrasil.publish(channel, :x)
        end)

      assert log == ""
    end
  end
end
