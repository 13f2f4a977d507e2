defmodule Yggdrasil.ApiTest do
  # Spec sections 1–3: messages, gen_channel, subscribe/unsubscribe/publish.
  use ExUnit.Case, async: true

  import Yggdrasil.Test.Helpers

  # assert_receive waits this long (ms) for other processes on a busy machine.
  @timeout 2_000

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  defp unique(tag \\ :api), do: {tag, System.unique_integer([:positive])}

  defp channel!(fields \\ []) do
    {:ok, channel} = Yggdrasil.gen_channel(Keyword.put_new(fields, :name, unique()))
    channel
  end

  defp key(channel), do: Channel.key(channel)

  describe "messages (section 1)" do
    test "connected, event and disconnected carry the caller's channel struct" do
      channel = channel!()

      assert :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      assert :ok = Yggdrasil.publish(channel, "hi")
      assert_receive {:Y_EVENT, ^channel, "hi"}, @timeout

      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
    end

    test "the channel may be a keyword list, a map or a struct in every call" do
      name = unique()
      {:ok, channel} = Yggdrasil.gen_channel(name: name)

      assert :ok = Yggdrasil.subscribe(name: name)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      assert :ok = Yggdrasil.publish(%{name: name}, :from_map)
      assert_receive {:Y_EVENT, ^channel, :from_map}, @timeout

      assert :ok = Yggdrasil.publish([name: name], :from_keyword)
      assert_receive {:Y_EVENT, ^channel, :from_keyword}, @timeout

      assert :ok = Yggdrasil.publish(%Channel{name: name}, :from_bare_struct)
      assert_receive {:Y_EVENT, ^channel, :from_bare_struct}, @timeout

      assert :ok = Yggdrasil.unsubscribe(%{name: name})
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
      assert Engine.subscriber_count(key(channel)) == 0
    end

    test "metadata given to publish/3 arrives in the event's channel" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      assert_receive {:Y_CONNECTED, ^channel}, @timeout

      :ok = Yggdrasil.publish(channel, "with", metadata: %{id: 7})
      assert_receive {:Y_EVENT, %Channel{metadata: %{id: 7}} = received, "with"}, @timeout
      assert %Channel{received | metadata: nil} == channel

      # No metadata: nil, i.e. the very struct the subscriber holds.
      :ok = Yggdrasil.publish(channel, "without")
      assert_receive {:Y_EVENT, ^channel, "without"}, @timeout

      :ok = Yggdrasil.publish(channel, "explicit nil", metadata: nil)
      assert_receive {:Y_EVENT, ^channel, "explicit nil"}, @timeout
    end

    test "a channel's metadata is not part of its identity" do
      name = unique()
      :ok = Yggdrasil.subscribe(name: name, metadata: :subscriber_side)
      assert_receive {:Y_CONNECTED, %Channel{name: ^name}}, @timeout

      {:ok, plain} = Yggdrasil.gen_channel(name: name)
      :ok = Yggdrasil.publish(plain, "reaches me")
      assert_receive {:Y_EVENT, ^plain, "reaches me"}, @timeout

      :ok = Yggdrasil.unsubscribe(name: name, metadata: :other)
      assert Engine.subscriber_count(key(plain)) == 0
    end

    test "any term is a channel name" do
      names = [
        "binary",
        :atom,
        42,
        1.5,
        {:tuple, 1, "x"},
        make_ref(),
        self(),
        %{"map" => [1, 2]},
        [nested: [name: "inner", adapter: :elixir]],
        [],
        nil,
        <<1::3>>
      ]

      for name <- names do
        {:ok, channel} = Yggdrasil.gen_channel(name: name)
        assert :ok = Yggdrasil.subscribe(channel)
        assert_receive {:Y_CONNECTED, ^channel}, @timeout
        assert :ok = Yggdrasil.publish(channel, {:for, name})
        assert_receive {:Y_EVENT, ^channel, {:for, ^name}}, @timeout
        assert :ok = Yggdrasil.unsubscribe(channel)
        assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
      end
    end

    test "events from one publisher arrive in publishing order" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      for i <- 1..1_000, do: :ok = Yggdrasil.publish(channel, i)
      assert Enum.to_list(1..1_000) == events_until_sentinel(channel)
    end

    test "every subscriber process receives each event" do
      channel = channel!()
      parent = self()

      pids =
        for i <- 1..5 do
          spawn_link(fn ->
            :ok = Yggdrasil.subscribe(channel)
            send(parent, {:ready, i})
            assert_receive {:Y_EVENT, ^channel, "to all"}, 5_000
            send(parent, {:got, i})
          end)
        end

      for i <- 1..5, do: assert_receive({:ready, ^i}, @timeout)
      assert Engine.subscriber_count(key(channel)) == length(pids)
      :ok = Yggdrasil.publish(channel, "to all")
      for i <- 1..5, do: assert_receive({:got, ^i}, @timeout)
    end

    test "publishing on a channel without subscribers is fine" do
      assert :ok = Yggdrasil.publish([name: unique()], "nobody listens")
    end
  end

  describe "gen_channel/1 (section 3)" do
    test "fills transformer and backend with the adapter's defaults" do
      assert {:ok,
              %Channel{
                name: "x",
                adapter: :elixir,
                transformer: :default,
                backend: :default,
                namespace: nil,
                metadata: nil
              }} == Yggdrasil.gen_channel(name: "x")
    end

    test "a struct, a map and a keyword list give the same channel" do
      expected = Yggdrasil.gen_channel(name: "same")
      assert {:ok, %Channel{}} = expected
      assert expected == Yggdrasil.gen_channel(%{name: "same"})
      assert expected == Yggdrasil.gen_channel(%Channel{name: "same"})
      assert expected == Yggdrasil.gen_channel(%{name: "same", adapter: :elixir})
      assert expected == Yggdrasil.gen_channel(name: "same", transformer: :default)
    end

    test "keeps what is given: transformer, backend, namespace, metadata" do
      assert {:ok,
              %Channel{
                name: "kept",
                transformer: :json,
                backend: Yggdrasil.Backend.Default,
                namespace: MyApp.Namespace,
                metadata: %{any: :thing}
              }} =
               Yggdrasil.gen_channel(
                 name: "kept",
                 transformer: :json,
                 backend: Yggdrasil.Backend.Default,
                 namespace: MyApp.Namespace,
                 metadata: %{any: :thing}
               )
    end

    test "adapter, transformer and backend may be given as modules" do
      assert {:ok, %Channel{adapter: Yggdrasil.Adapter.Elixir, transformer: :default}} =
               Yggdrasil.gen_channel(name: "m", adapter: Yggdrasil.Adapter.Elixir)

      assert {:ok, %Channel{transformer: Yggdrasil.Transformer.Json}} =
               Yggdrasil.gen_channel(name: "m", transformer: Yggdrasil.Transformer.Json)
    end

    test "unknown adapter, transformer or backend give an error" do
      assert {:error, _} = Yggdrasil.gen_channel(name: "x", adapter: :no_such_adapter)
      assert {:error, _} = Yggdrasil.gen_channel(name: "x", transformer: :no_such_transformer)
      assert {:error, _} = Yggdrasil.gen_channel(name: "x", backend: :no_such_backend)
      assert {:error, _} = Yggdrasil.gen_channel(%Channel{name: "x", adapter: nil})
      assert {:error, _} = Yggdrasil.gen_channel(%{name: "x", adapter: "elixir"})
      assert {:error, _} = Yggdrasil.gen_channel(%Channel{name: "x", backend: "default"})
      assert {:error, _} = Yggdrasil.gen_channel(%Channel{name: "x", transformer: 1})
      assert {:error, _} = Yggdrasil.gen_channel(name: "x", adapter: Yggdrasil.Transformer.Json)
    end

    test "anything that is not a map, list or channel struct gives an error" do
      for bad <- ["room", :room, 1, 1.0, nil, {:name, "x"}, self(), make_ref(), <<1::3>>] do
        assert {:error, _} = Yggdrasil.gen_channel(bad), "accepted #{inspect(bad)}"
      end
    end

    test "other structs, non-keyword lists and non-atom map keys give an error" do
      for bad <- [
            %URI{},
            %{__struct__: Nope, name: "x"},
            ["x"],
            [{:name, "x"}, :loose],
            [{"name", "x"}],
            %{"name" => "x"},
            [name: "x"] ++ :improper
          ] do
        assert {:error, _} = Yggdrasil.gen_channel(bad), "accepted #{inspect(bad)}"
      end
    end

    test "keys that are not channel fields are ignored, as in Yggdrasil 6" do
      assert {:ok, %Channel{name: "x", adapter: :elixir}} =
               Yggdrasil.gen_channel(name: "x", topic: "extra")

      assert {:ok, %Channel{name: "x"}} = Yggdrasil.gen_channel(%{name: "x", topic: "y"})
      assert {:ok, %Channel{name: "x"}} = Yggdrasil.gen_channel(__struct__: URI, name: "x")

      # Still one channel: subscribing with extra keys, publishing without.
      name = unique()
      :ok = Yggdrasil.subscribe(name: name, extra: :ignored)
      :ok = Yggdrasil.publish([name: name], "same channel")
      assert_receive {:Y_EVENT, %Channel{name: ^name}, "same channel"}, @timeout
    end

    test "an empty keyword list or map is a channel named nil" do
      assert {:ok, %Channel{name: nil, adapter: :elixir}} = Yggdrasil.gen_channel([])
      assert {:ok, %Channel{name: nil}} = Yggdrasil.gen_channel(%{})
    end
  end

  describe "subscribe/1, unsubscribe/1 (section 3)" do
    test "subscribing twice is idempotent: one delivery per event" do
      channel = channel!()
      assert :ok = Yggdrasil.subscribe(channel)
      assert :ok = Yggdrasil.subscribe(channel)
      assert :ok = Yggdrasil.subscribe(Map.from_struct(channel))
      assert Engine.subscriber_count(key(channel)) == 1

      :ok = Yggdrasil.publish(channel, :once)
      assert [:once] == events_until_sentinel(channel)

      # One unsubscribe undoes it.
      assert :ok = Yggdrasil.unsubscribe(channel)
      assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
      assert Engine.subscriber_count(key(channel)) == 0
      refute Engine.subscribed?(key(channel), self())
    end

    test "after unsubscribe/1 nothing more arrives" do
      channel = channel!()
      parent = self()

      # Another subscriber proves the events are still being published.
      witness =
        spawn_link(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, :witness_ready)
          assert_receive {:Y_EVENT, ^channel, :after}, 5_000
          send(parent, :witness_got_it)
        end)

      assert_receive :witness_ready, @timeout
      :ok = Yggdrasil.subscribe(channel)
      :ok = Yggdrasil.unsubscribe(channel)
      :ok = Yggdrasil.publish(channel, :after)
      assert_receive :witness_got_it, @timeout
      refute_received {:Y_EVENT, _, _}
      assert Engine.subscribers(key(channel)) in [[witness], []]
    end

    test "unsubscribing a channel one is not subscribed to returns :ok" do
      assert :ok = Yggdrasil.unsubscribe(name: unique())
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)
      :ok = Yggdrasil.unsubscribe(channel)
      assert :ok = Yggdrasil.unsubscribe(channel)
      assert Engine.subscriber_count(key(channel)) == 0
    end

    test "re-subscribing right after the last unsubscribe works, 300 times in a row" do
      channel = channel!()

      for i <- 1..300 do
        assert :ok = Yggdrasil.subscribe(channel)
        assert_receive {:Y_CONNECTED, ^channel}, @timeout
        assert :ok = Yggdrasil.publish(channel, i)
        assert_receive {:Y_EVENT, ^channel, ^i}, @timeout
        assert :ok = Yggdrasil.unsubscribe(channel)
        assert_receive {:Y_DISCONNECTED, ^channel}, @timeout
        assert Engine.subscriber_count(key(channel)) == 0
      end

      refute_received {:Y_EVENT, _, _}
    end

    test "re-subscribing right after the last subscriber left, from fresh processes" do
      channel = channel!()
      parent = self()

      for i <- 1..300 do
        pid =
          spawn(fn ->
            :ok = Yggdrasil.subscribe(channel)
            send(parent, {:subscribed, self()})

            receive do
              {:Y_EVENT, ^channel, ^i} ->
                :ok = Yggdrasil.unsubscribe(channel)
                send(parent, {:done, self()})
            end
          end)

        assert_receive {:subscribed, ^pid}, @timeout
        :ok = Yggdrasil.publish(channel, i)
        assert_receive {:done, ^pid}, @timeout
      end
    end
  end

  describe "publish/3 (section 3)" do
    test "encodes and decodes with the channel's transformer" do
      channel = channel!(transformer: :json)
      :ok = Yggdrasil.subscribe(channel)

      assert :ok = Yggdrasil.publish(channel, %{"a" => [1, 2.5, nil], "b" => %{"c" => true}})

      assert_receive {:Y_EVENT, ^channel, %{"a" => [1, 2.5, nil], "b" => %{"c" => true}}},
                     @timeout

      assert :ok = Yggdrasil.publish(channel, %{atom_key: :atom_value})
      assert_receive {:Y_EVENT, ^channel, %{"atom_key" => "atom_value"}}, @timeout
    end

    test "a message the transformer cannot encode is an error and is not delivered" do
      channel = channel!(transformer: :json)
      :ok = Yggdrasil.subscribe(channel)
      assert {:error, _} = Yggdrasil.publish(channel, "not a map")
      assert {:error, _} = Yggdrasil.publish(channel, %{"pid" => self()})
      assert [] == events_until_sentinel(channel)
    end

    test "bad options give an error, never a crash" do
      channel = channel!()
      :ok = Yggdrasil.subscribe(channel)

      for bad <- [:metadata, %{metadata: 1}, "metadata", [1, 2], [{:metadata, 1}, :x], {}] do
        assert {:error, _} = Yggdrasil.publish(channel, "x", bad), "accepted #{inspect(bad)}"
      end

      assert [] == events_until_sentinel(channel)
    end

    test "non-channels give an error" do
      for bad <- ["room", nil, 1, %URI{}, ["x"], [name: "x", adapter: :nope]] do
        assert {:error, _} = Yggdrasil.publish(bad, "x"), "accepted #{inspect(bad)}"
        assert {:error, _} = Yggdrasil.subscribe(bad), "accepted #{inspect(bad)}"
        assert {:error, _} = Yggdrasil.unsubscribe(bad), "accepted #{inspect(bad)}"
      end

      refute_received {:Y_CONNECTED, _}
      refute_received {:Y_DISCONNECTED, _}
    end

    test "a failed subscribe leaves no subscription behind" do
      name = unique()
      assert {:error, _} = Yggdrasil.subscribe(name: name, backend: :no_such_backend)
      {:ok, channel} = Yggdrasil.gen_channel(name: name)

      for candidate <- [channel, %Channel{channel | backend: :no_such_backend}] do
        assert Engine.subscriber_count(key(candidate)) == 0
      end
    end
  end
end
