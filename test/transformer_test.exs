defmodule Yggdrasil.TransformerTest do
  # Spec section 6: Yggdrasil.Transformer, :default, :json and custom
  # transformers.
  use ExUnit.Case, async: true

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  alias Yggdrasil.Channel
  alias Yggdrasil.Transformer
  alias Yggdrasil.Transformer.Json

  # Text is upper-cased on the wire and tagged on the way back.
  defmodule Shout do
    use Yggdrasil.Transformer, name: :transformer_test_shout

    @impl Yggdrasil.Transformer
    def encode(%Channel{}, text) when is_binary(text), do: {:ok, {:wire, String.upcase(text)}}
    def encode(_channel, other), do: {:error, {:not_text, other}}

    @impl Yggdrasil.Transformer
    def decode(%Channel{}, {:wire, "BROKEN"}), do: {:error, :cannot_decode}
    def decode(%Channel{}, {:wire, text}), do: {:ok, {:heard, text}}
  end

  # Only `use`: the identity, with the channel check.
  defmodule Plain do
    use Yggdrasil.Transformer, name: :transformer_test_plain
  end

  setup_all do
    :ok = Shout.register()
    :ok = Plain.register()
  end

  @channel %Channel{name: "json", transformer: :json}

  defp encode(term), do: Json.encode(@channel, term)
  defp decode(text), do: Json.decode(@channel, text)

  defp round_trip(term) do
    assert {:ok, text} = encode(term)
    assert is_binary(text)
    assert {:ok, decoded} = decode(text)
    decoded
  end

  describe "Yggdrasil.Transformer dispatchers" do
    test "encode/2 and decode/2 dispatch on channel.transformer" do
      assert {:ok, "{\"a\":1}"} = Transformer.encode(@channel, %{"a" => 1})
      assert {:ok, %{"a" => 1}} = Transformer.decode(@channel, "{\"a\":1}")

      default = %Channel{name: "d", transformer: :default}
      assert {:ok, {:any, 1}} = Transformer.encode(default, {:any, 1})
      assert {:ok, {:any, 1}} = Transformer.decode(default, {:any, 1})

      by_module = %Channel{name: "d", transformer: Shout}
      assert {:ok, {:wire, "HI"}} = Transformer.encode(by_module, "hi")
      assert {:ok, {:heard, "HI"}} = Transformer.decode(by_module, {:wire, "HI"})
    end

    test "unknown transformers and non-channels give {:error, _}" do
      unknown = %Channel{name: "x", transformer: :no_such_transformer}
      assert {:error, _} = Transformer.encode(unknown, "m")
      assert {:error, _} = Transformer.decode(unknown, "m")
      assert {:error, _} = Transformer.encode(%Channel{name: "x", transformer: nil}, "m")

      for bad <- ["x", nil, %{transformer: :json}, [transformer: :json]] do
        assert {:error, _} = Transformer.encode(bad, %{})
        assert {:error, _} = Transformer.decode(bad, "{}")
      end
    end
  end

  describe ":default and `use Yggdrasil.Transformer`" do
    test "the default transformer is the identity for any term" do
      for term <- ["x", 1, nil, {:t, [1]}, %{a: self()}, make_ref(), <<255>>] do
        assert {:ok, ^term} = Yggdrasil.Transformer.Default.encode(%Channel{}, term)
        assert {:ok, ^term} = Yggdrasil.Transformer.Default.decode(%Channel{}, term)
      end
    end

    test "the generated identity refuses a non-channel first argument" do
      assert {:ok, :m} = Plain.encode(%Channel{}, :m)
      assert {:ok, :m} = Plain.decode(%Channel{}, :m)
      assert {:error, _} = Plain.encode(:not_a_channel, :m)
      assert {:error, _} = Plain.decode(%{name: "x"}, :m)
      assert {:error, _} = Yggdrasil.Transformer.Default.encode("x", :m)
    end

    test "start_link/1, register/0 and child_spec/1 like backends" do
      assert Plain.child_spec(:a) == %{
               id: Plain,
               start: {Plain, :start_link, [:a]},
               restart: :transient
             }

      assert :ok = Plain.register()
      assert {:ok, pid} = Plain.start_link(:a)
      assert is_pid(pid)
      assert {:ok, Plain} == Yggdrasil.Registry.get_transformer_module(:transformer_test_plain)
      assert {:ok, Plain} == Yggdrasil.Registry.get_transformer_module(Plain)
    end

    test "without :name raises ArgumentError" do
      assert_raise ArgumentError, ~r/name/, fn ->
        defmodule NoName do
          use Yggdrasil.Transformer
        end
      end

      assert_raise ArgumentError, fn ->
        defmodule StringName do
          use Yggdrasil.Transformer, name: "shout"
        end
      end
    end
  end

  describe "a custom transformer alias" do
    test "is used by Yggdrasil.publish/3: subscribers get decode(encode(message))" do
      {:ok, channel} =
        Yggdrasil.gen_channel(name: make_ref(), transformer: :transformer_test_shout)

      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      assert :ok = Yggdrasil.publish(channel, "hello")
      assert_receive {:Y_EVENT, ^channel, {:heard, "HELLO"}}, @timeout
    end

    test "encode and decode errors come back from publish/3 and nothing is delivered" do
      {:ok, channel} = Yggdrasil.gen_channel(name: make_ref(), transformer: Shout)
      :ok = Yggdrasil.subscribe(channel)

      assert {:error, {:not_text, 42}} = Yggdrasil.publish(channel, 42)
      assert {:error, :cannot_decode} = Yggdrasil.publish(channel, "broken")
      assert :ok = Yggdrasil.publish(channel, "fine")
      assert_receive {:Y_EVENT, ^channel, {:heard, "FINE"}}, @timeout
      refute_received {:Y_EVENT, _, _}
    end
  end

  describe ":json encode" do
    test "the exact encoding of %{\"hello\" => \"world\"}" do
      assert {:ok, "{\"hello\":\"world\"}"} == Json.encode(%Channel{}, %{"hello" => "world"})
      assert {:ok, "{\"hello\":\"world\"}"} == Transformer.encode(@channel, %{"hello" => "world"})
    end

    test "scalars: atoms, nil, booleans, integers, floats" do
      assert {:ok, ~s({"a":"b"})} == encode(%{a: :b})
      assert {:ok, ~s({"n":null})} == encode(%{"n" => nil})
      assert {:ok, ~s({"t":true})} == encode(%{"t" => true})
      assert {:ok, ~s({"f":false})} == encode(%{"f" => false})
      assert {:ok, ~s({"i":-42})} == encode(%{"i" => -42})
      assert {:ok, ~s({"x":1.5})} == encode(%{"x" => 1.5})
      assert {:ok, ~s({"Elixir.Mod":"Elixir.Mod"})} == encode(%{Mod => Mod})
      assert {:ok, ~s({"1":"one"})} == encode(%{1 => "one"})
      assert {:ok, "{}"} == encode(%{})
    end

    test "nested maps and lists round-trip with string keys" do
      term = %{
        "list" => [1, "two", [3, [4]], %{"five" => 5}, [], %{}],
        "map" => %{"inner" => %{"deeper" => [true, false, nil]}},
        atom_key: %{nested_atom: :value}
      }

      assert round_trip(term) == %{
               "list" => [1, "two", [3, [4]], %{"five" => 5}, [], %{}],
               "map" => %{"inner" => %{"deeper" => [true, false, nil]}},
               "atom_key" => %{"nested_atom" => "value"}
             }
    end

    test "floats round-trip exactly" do
      for x <- [0.1, -2.5, 1.0e300, -1.0e-300, 123_456.789, 5.0e-324, 1.7976931348623157e308] do
        assert %{"x" => ^x} = round_trip(%{"x" => x})
      end

      # A whole float stays a float.
      assert %{"x" => y} = round_trip(%{"x" => 3.0})
      assert is_float(y) and y == 3.0
    end

    test "64-bit integers at the edges round-trip" do
      for n <- [0, -(2 ** 63), 2 ** 63 - 1, 2 ** 64 - 1] do
        assert %{"n" => ^n} = round_trip(%{"n" => n})
      end
    end

    test "unicode text and keys, and escapes, round-trip" do
      text = "ключ ü 値 😀 \u2028 \" \\ / \n\t\0"
      assert round_trip(%{text => text}) == %{text => text}
      assert {:ok, encoded} = encode(%{"e" => "😀"})
      assert String.valid?(encoded)
    end

    test "the structs Jason knows are written as Jason writes them, at any depth" do
      message = %{
        "on" => ~D[2026-12-07],
        "at" => [~U[2026-12-07 13:04:05.123Z], %{"local" => ~N[2026-12-07 13:04:05]}],
        "time" => ~T[13:04:05]
      }

      assert {:ok, json} = encode(message)

      assert {:ok, decoded} = Yggdrasil.Transformer.Json.decode(%Channel{}, json)

      assert decoded == %{
               "on" => "2026-12-07",
               "at" => ["2026-12-07T13:04:05.123Z", %{"local" => "2026-12-07T13:04:05"}],
               "time" => "13:04:05"
             }

      # Next to a term JSON cannot hold, still an error.
      assert {:error, _} = encode(%{"on" => ~D[2026-12-07], "tuple" => {1, 2}})
    end

    test "terms JSON cannot hold give {:error, _}" do
      for bad <- [
            %{"tuple" => {1, 2}},
            %{"pid" => self()},
            %{"ref" => make_ref()},
            %{"fun" => fn -> :ok end},
            %{"port" => hd(Port.list())},
            %{"struct" => %URI{}},
            %{"deep" => [%{"x" => {:nested}}]},
            %{{:tuple, :key} => 1},
            %{["list", "key"] => 1},
            %{1.5 => "float key"},
            %{"bits" => <<1::3>>}
          ] do
        assert {:error, reason} = encode(bad), "encoded #{inspect(bad)}"
        assert is_binary(reason) or is_atom(reason) or is_tuple(reason)
      end
    end

    test "non-UTF-8 binaries give {:error, _}, in values and keys" do
      assert {:error, _} = encode(%{"bin" => <<255, 254>>})
      assert {:error, _} = encode(%{<<0xC3>> => 1})
      assert {:error, _} = encode(%{"list" => ["ok", <<0xED, 0xA0, 0x80>>]})
      # One far over the normal scheduler's budget is left to the dirty one
      # by its size alone, before its bytes are read (in a value or a key).
      huge = :binary.copy(<<255>>, 10_000_000)
      assert :too_big = Yggdrasil.Native.json_encode(%{"bin" => huge})
      assert :too_big = Yggdrasil.Native.json_encode(%{huge => 1})
      assert {:error, _} = encode(%{"bin" => huge})
    end

    test "improper lists give {:error, _}" do
      assert {:error, _} = encode(%{"l" => [1 | 2]})
      assert {:error, _} = encode(%{"l" => [1, 2, 3 | "tail"]})
      assert {:error, _} = encode(%{"l" => [[1 | :x]]})
    end

    test "anything but a plain map gives {:error, _}" do
      for bad <- [[1, 2], "text", 1, 1.5, nil, true, :atom, {:a, 1}, %URI{}, self()] do
        assert {:error, _} = encode(bad), "encoded #{inspect(bad)}"
      end
    end

    test "a map with more than 20k nodes is encoded (dirty path) and round-trips" do
      big = Map.new(1..25_000, fn i -> {"key#{i}", [i, "v#{i}"]} end)
      assert :too_big = Yggdrasil.Native.json_encode(big)
      assert {:ok, text} = encode(big)
      assert byte_size(text) > 64 * 1024
      assert {:ok, ^big} = decode(text)
    end

    test "a large map with a bad leaf still gives {:error, _} on the dirty path" do
      big = Map.new(1..25_000, fn i -> {"key#{i}", i} end) |> Map.put("bad", {:tuple})
      assert {:error, _} = encode(big)
    end
  end

  describe ":json decode" do
    test "objects come back with string keys" do
      assert {:ok, %{"hello" => "world"}} == decode(~s({"hello":"world"}))

      assert {:ok, %{"a" => %{"b" => [1, 2.5, nil, true, false, "s"]}}} ==
               decode(~s({"a": {"b": [1, 2.5, null, true, false, "s"]}}))
    end

    test "any JSON value is decoded, not only objects" do
      assert {:ok, [1, 2]} == decode("[1,2]")
      assert {:ok, "s"} == decode(~s("s"))
      assert {:ok, 1} == decode("1")
      assert {:ok, nil} == decode("null")
      assert {:ok, true} == decode(" true ")
    end

    test "unicode escapes and raw UTF-8" do
      assert {:ok, %{"k" => "ü😀"}} == decode(~s({"k":"\\u00fc\\ud83d\\ude00"}))
      assert {:ok, %{"ключ" => "値"}} == decode(~s({"ключ":"値"}))
    end

    test "invalid JSON gives {:error, _}" do
      for bad <- [
            "",
            "{oops",
            "{\"a\":}",
            "[1,2",
            "{'single': 1}",
            "1 2",
            "NaN",
            "1e400",
            "{\"a\":1,}",
            ~s("\\ud800"),
            "nul"
          ] do
        assert {:error, _} = decode(bad), "decoded #{inspect(bad)}"
      end
    end

    test "non-UTF-8 input gives {:error, _}" do
      assert {:error, _} = decode(<<"\"", 255, "\"">>)
      assert {:error, _} = decode(<<0xC3, 0x28>>)
    end

    test "a non-binary gives {:error, _}" do
      for bad <- [%{"a" => 1}, [1], 1, nil, :atom, {:json}, <<1::3>>, ~c"{}"] do
        assert {:error, _} = decode(bad), "decoded #{inspect(bad)}"
      end
    end

    test "a payload above 64 KB (dirty path) decodes" do
      items = for i <- 1..10_000, do: %{"i" => i, "s" => "text #{i}"}
      {:ok, text} = encode(%{"items" => items})
      assert byte_size(text) > 64 * 1024
      assert {:ok, %{"items" => ^items}} = decode(text)

      # And a large invalid one is an error on the same path.
      assert {:error, _} = decode(binary_part(text, 0, byte_size(text) - 1))
    end

    test "a large string value and a large array" do
      long = String.duplicate("é", 100_000)
      assert %{"s" => ^long} = round_trip(%{"s" => long})
      many = Enum.to_list(1..50_000)
      assert %{"l" => ^many} = round_trip(%{"l" => many})
    end
  end

  describe ":json through Yggdrasil.publish/3" do
    test "subscribers get the decoded map; bad messages are errors" do
      {:ok, channel} = Yggdrasil.gen_channel(name: make_ref(), transformer: :json)
      :ok = Yggdrasil.subscribe(channel)

      assert :ok = Yggdrasil.publish(channel, %{"hello" => "world", n: [1, nil]})
      assert_receive {:Y_EVENT, ^channel, %{"hello" => "world", "n" => [1, nil]}}, @timeout

      assert {:error, _} = Yggdrasil.publish(channel, "a string")
      assert {:error, _} = Yggdrasil.publish(channel, %{"bad" => {:tuple}})
      assert {:error, _} = Yggdrasil.publish(channel, %{"bad" => [1 | 2]})

      big = Map.new(1..25_000, fn i -> {"k#{i}", i} end)
      assert :ok = Yggdrasil.publish(channel, big)
      assert_receive {:Y_EVENT, ^channel, ^big}, @timeout
      refute_received {:Y_EVENT, _, _}
    end
  end
end
